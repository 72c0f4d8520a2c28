# Reference fits from R for GLMMs with a dispersion parameter:
# negative binomial (NB2), Gamma, beta and inverse Gaussian.
#
# Run from the repository root (single-threaded):
#   OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 Rscript tools/r_references/glmm_families.R
#
# Writes
#   tests/data/families/<name>.csv          the data behind the fits
#   tests/reference/families/<case>.json    one file per case
#
# Every model is fitted to the CSV *as read back*, so each CSV holds exactly the
# data behind the reference values.  Derived columns (e.g. height_s) are in the
# CSVs; the formulas use them directly.  Only R is run here: the fitting is done
# by glmmTMB / lme4, except the inverse-Gaussian case (glmmTMB has no such
# family), whose marginal likelihood is written out below and maximised with
# optim().

Sys.setenv(OMP_NUM_THREADS = "1", OPENBLAS_NUM_THREADS = "1")
options(glmmTMB.cores = 1L, warn = 1)

suppressPackageStartupMessages({
  library(glmmTMB)
  library(lme4)
  library(jsonlite)
})

args_all <- commandArgs(trailingOnly = FALSE)
script_path <- sub("^--file=", "", args_all[grep("^--file=", args_all)])
root <- if (length(script_path)) {
  normalizePath(file.path(dirname(script_path), "..", ".."))
} else {
  getwd()
}
data_dir <- file.path(root, "tests", "data", "families")
ref_dir <- file.path(root, "tests", "reference", "families")
dir.create(data_dir, recursive = TRUE, showWarnings = FALSE)
dir.create(ref_dir, recursive = TRUE, showWarnings = FALSE)

N_TIMING <- 3L
only <- commandArgs(trailingOnly = TRUE)  # optional: case names to run

r_version <- R.version.string
ver <- function(p) utils::packageDescription(p)$Version
engine_tmb <- paste("glmmTMB", ver("glmmTMB"))
engine_lme4 <- paste("lme4", ver("lme4"))

# ---------------------------------------------------------------- JSON output
# Numbers are written in the shortest form that reads back to the same double
# (15, 16 or 17 significant digits); NA / non-finite -> null.
num_json <- function(x) {
  if (is.na(x) || !is.finite(x)) return(structure("null", class = "json"))
  if (x == round(x) && abs(x) < 1e15) {
    return(structure(format(x, scientific = FALSE), class = "json"))
  }
  for (k in 15:17) {
    s <- sprintf("%.*g", k, x)
    if (as.numeric(s) == x) break
  }
  structure(s, class = "json")
}
prep_json <- function(x) {
  if (inherits(x, "AsIs")) return(x)  # character arrays kept as arrays
  if (is.list(x)) {
    nm <- names(x)
    out <- lapply(x, prep_json)
    names(out) <- nm
    return(out)
  }
  if (is.logical(x) && length(x) == 1) return(x)
  if (is.integer(x) && length(x) == 1) return(x)
  if (is.numeric(x) && length(x) == 1) return(num_json(x))
  if (is.numeric(x) && length(x) != 1) return(lapply(x, num_json))
  x
}
named_num <- function(v) {
  # named numeric vector -> JSON object {name: value}
  if (length(v) == 0) return(structure(list(), names = character(0)))
  out <- as.list(unname(as.numeric(v)))
  names(out) <- names(v)
  out
}
named_int <- function(v) {
  out <- as.list(as.integer(unname(v)))
  names(out) <- names(v)
  out
}
write_case <- function(res) {
  keys <- c("case", "engine", "r_version", "call", "dataset", "dataset_source",
            "formula", "family", "link", "method", "nAGQ", "loglik", "df",
            "fixef", "se", "ranef_sd", "ranef_corr", "dispersion_name",
            "dispersion", "sigma", "nobs", "ngroups", "converged", "messages",
            "notes", "timing_s")
  stopifnot(setequal(names(res), keys))
  res <- res[keys]
  # the level orders of levels_note(), also as a structured field for readers
  m <- regmatches(res$notes, regexec("Factor levels \\(first = reference level\\): (.*?)\\.( |$)",
                                     res$notes))[[1]]
  res$factor_levels <- setNames(list(), character(0))
  if (length(m)) {
    for (part in strsplit(m[[2]], "; ", fixed = TRUE)[[1]]) {
      kv <- strsplit(part, " = ", fixed = TRUE)[[1]]
      res$factor_levels[[kv[[1]]]] <- I(strsplit(gsub("^\\[|\\]$", "", kv[[2]]), ", ")[[1]])
    }
  }
  res$messages <- I(as.character(res$messages))
  txt <- toJSON(prep_json(res), auto_unbox = TRUE, json_verbatim = TRUE,
                pretty = TRUE, null = "null", na = "null")
  path <- file.path(ref_dir, paste0(res$case, ".json"))
  writeLines(txt, path)
  cat(sprintf("wrote %s  (loglik %.6f)\n", path, res$loglik))
}

# ---------------------------------------------------------------- data output
# write the CSV, read it back, and restore the factor levels (level order as in
# the original R data; the first level is the reference level)
write_data <- function(df, name, factors = list()) {
  path <- file.path(data_dir, paste0(name, ".csv"))
  write.csv(df, path, row.names = FALSE)
  d <- read.csv(path, stringsAsFactors = FALSE)
  for (f in names(factors)) {
    d[[f]] <- factor(as.character(d[[f]]), levels = factors[[f]])
    stopifnot(!anyNA(d[[f]]))
  }
  d
}
levels_note <- function(factors) {
  if (!length(factors)) return("")
  paste0("Factor levels (first = reference level): ",
         paste(sprintf("%s = [%s]", names(factors),
                       vapply(factors, paste, "", collapse = ", ")),
               collapse = "; "), ".")
}

# ---------------------------------------------------------------- fitting
# Evaluate a call N_TIMING times; keep the first fit and the warnings/messages it
# raised; timing = median elapsed seconds.
run_fit <- function(cl, env) {
  msgs <- character(0)
  fit <- withCallingHandlers(
    eval(cl, env),
    warning = function(w) {
      msgs <<- c(msgs, paste("warning:", conditionMessage(w)))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      msgs <<- c(msgs, paste("message:", trimws(conditionMessage(m))))
      invokeRestart("muffleMessage")
    })
  times <- numeric(N_TIMING)
  for (k in seq_len(N_TIMING)) {
    times[k] <- system.time(suppressWarnings(suppressMessages(eval(cl, env))))[["elapsed"]]
  }
  list(fit = fit, messages = unique(msgs), timing = median(times),
       times = times)
}
call_text <- function(cl) paste(deparse(cl, width.cutoff = 500L), collapse = " ")

varcorr_lists <- function(vc) {
  # vc: list of covariance matrices (one per grouping term) with attributes
  # stddev / correlation, as lme4 and glmmTMB return them
  sds <- list()
  cors <- list()
  for (g in names(vc)) {
    s <- attr(vc[[g]], "stddev")
    for (t in names(s)) sds[[paste(g, t, sep = ".")]] <- unname(s[[t]])
    cm <- attr(vc[[g]], "correlation")
    if (!is.null(cm) && nrow(cm) > 1) {
      tn <- rownames(cm)
      for (j in 1:(ncol(cm) - 1)) for (i in (j + 1):nrow(cm)) {
        cors[[paste(g, tn[j], tn[i], sep = ".")]] <- cm[i, j]
      }
    }
  }
  if (!length(cors)) cors <- structure(list(), names = character(0))
  list(sd = sds, corr = cors)
}

laplace_note_tmb <- paste(
  "glmmTMB (TMB) Laplace approximation: the inner Hessian is the exact (observed)",
  "Hessian of the joint log-density with respect to the random effects, by",
  "automatic differentiation; outer optimizer nlminb over fixed effects,",
  "log-SDs (and correlation parameters) and the log-dispersion.",
  "SEs are from sdreport(): inverse of the Hessian of the Laplace",
  "log-likelihood over all outer parameters (beta block), so they account for",
  "the estimated variance and dispersion parameters.",
  "logLik is the full log-likelihood (all normalising constants included).")

fit_tmb <- function(case, cl, data_name, data, dataset_csv, dataset_source,
                    family_name, dispersion_name, notes = "") {
  env <- new.env()
  assign(data_name, data, envir = env)
  r <- run_fit(cl, env)
  fit <- r$fit
  ll <- logLik(fit)
  fe <- fixef(fit)$cond
  V <- vcov(fit)$cond
  se <- sqrt(diag(V))
  vc <- varcorr_lists(VarCorr(fit)$cond)
  sig <- sigma(fit)
  fam <- family(fit)
  disp <- switch(dispersion_name,
                 theta = sig,          # nbinom2: sigma() is theta
                 shape = 1 / sig^2,    # Gamma: sigma() is 1/sqrt(shape)
                 phi = sig,            # beta: sigma() is phi
                 stop("unknown dispersion"))
  pdh <- isTRUE(fit$sdr$pdHess)
  conv <- isTRUE(fit$fit$convergence == 0) && pdh
  ngr <- summary(fit)$ngrps$cond
  list(
    case = case, engine = engine_tmb, r_version = r_version,
    call = call_text(cl), dataset = dataset_csv, dataset_source = dataset_source,
    formula = paste(deparse(formula(fit), width.cutoff = 500L), collapse = " "),
    family = family_name, link = fam$link, method = "Laplace", nAGQ = 1L,
    loglik = as.numeric(ll), df = as.integer(attr(ll, "df")),
    fixef = named_num(fe), se = named_num(se),
    ranef_sd = vc$sd, ranef_corr = vc$corr,
    dispersion_name = dispersion_name, dispersion = disp, sigma = sig,
    nobs = as.integer(nobs(fit)), ngroups = named_int(ngr),
    converged = conv, messages = r$messages,
    notes = trimws(paste(notes, laplace_note_tmb,
                         sprintf("nlminb convergence code %d, message '%s'; pdHess %s.",
                                 fit$fit$convergence, fit$fit$message, pdh),
                         sprintf("Timing runs (s): %s.",
                                 paste(round(r$times, 3), collapse = ", ")))),
    timing_s = r$timing)
}

fit_nb_lme4 <- function(case, cl, data_name, data, dataset_csv, dataset_source,
                        notes = "") {
  env <- new.env()
  assign(data_name, data, envir = env)
  r <- run_fit(cl, env)
  fit <- r$fit
  ll <- logLik(fit)
  fe <- fixef(fit)
  se <- sqrt(diag(as.matrix(vcov(fit))))
  vc <- varcorr_lists(VarCorr(fit))
  th <- getME(fit, "glmer.nb.theta")
  conv_msgs <- fit@optinfo$conv$lme4$messages
  conv <- length(conv_msgs) == 0 &&
    !any(grepl("converge|limit reached|unidentifiable", r$messages, ignore.case = TRUE))
  msgs <- unique(c(r$messages, if (length(conv_msgs)) paste("lme4 conv:", conv_msgs)))
  list(
    case = case, engine = engine_lme4, r_version = r_version,
    call = call_text(cl), dataset = dataset_csv, dataset_source = dataset_source,
    formula = paste(deparse(formula(fit), width.cutoff = 500L), collapse = " "),
    family = "negative_binomial", link = family(fit)$link, method = "Laplace",
    nAGQ = 1L,
    loglik = as.numeric(ll), df = as.integer(attr(ll, "df")),
    fixef = named_num(fe), se = named_num(se),
    ranef_sd = vc$sd, ranef_corr = vc$corr,
    dispersion_name = "theta", dispersion = th, sigma = sigma(fit),
    nobs = as.integer(nobs(fit)), ngroups = named_int(ngrps(fit)),
    converged = conv, messages = msgs,
    notes = trimws(paste(
      notes,
      "lme4::glmer.nb: alternates a 1-d optimisation of theta (on the",
      "profiled Laplace log-likelihood) with glmer fits at fixed theta;",
      "family(fit) is 'Negative Binomial(theta)' with log link.",
      "glmer's Laplace approximation is built by PIRLS with the GLM working",
      "(expected-information / Fisher) weights, which for the NB log link",
      "(not canonical) differ from the observed Hessian that glmmTMB uses, so",
      "the log-likelihood and estimates differ slightly from the glmmTMB fit.",
      "SEs are from vcov() of the final glmer fit at fixed theta (lme4's",
      "finite-difference Hessian over (theta_RE, beta)); they do not account",
      "for the estimation of the NB theta.",
      sprintf("logLik df attribute as lme4 reports it (%d).", as.integer(attr(ll, "df"))),
      sprintf("Timing runs (s): %s.", paste(round(r$times, 3), collapse = ", ")))),
    timing_s = r$timing)
}

want <- function(case) !length(only) || case %in% only

# ================================================================ data sets
## Salamanders (glmmTMB)
sal_f <- list(mined = levels(Salamanders$mined), spp = levels(Salamanders$spp),
              site = as.character(levels(Salamanders$site)))
sal0 <- data.frame(id = seq_len(nrow(Salamanders)),
                   count = Salamanders$count,
                   mined = as.character(Salamanders$mined),
                   spp = as.character(Salamanders$spp),
                   site = as.character(Salamanders$site))
salamanders <- write_data(sal0, "salamanders", sal_f)

## grouseticks (lme4)
gt <- lme4::grouseticks
gt_f <- list(YEAR = levels(gt$YEAR), BROOD = levels(gt$BROOD))
gt0 <- data.frame(id = as.integer(as.character(gt$INDEX)),
                  TICKS = gt$TICKS,
                  YEAR = as.character(gt$YEAR),
                  height_s = as.numeric(scale(gt$HEIGHT)),
                  BROOD = as.character(gt$BROOD))
grouseticks <- write_data(gt0, "grouseticks", gt_f)

## epil (MASS)
ep <- MASS::epil
ep_f <- list(trt = levels(ep$trt), subject = as.character(sort(unique(ep$subject))))
ep0 <- data.frame(id = seq_len(nrow(ep)),
                  y = ep$y,
                  trt = as.character(ep$trt),
                  base_s = as.numeric(scale(log(ep$base))),
                  age_s = as.numeric(scale(log(ep$age))),
                  subject = ep$subject)
epil <- write_data(ep0, "epil", ep_f)

## sleepstudy (lme4)
ss <- lme4::sleepstudy
ss_f <- list(Subject = levels(ss$Subject))
ss0 <- data.frame(id = seq_len(nrow(ss)), Reaction = ss$Reaction,
                  Days = ss$Days, Subject = as.character(ss$Subject))
sleepstudy <- write_data(ss0, "sleepstudy", ss_f)

## ChickWeight (datasets); Chick becomes a plain (unordered) factor
cw <- as.data.frame(datasets::ChickWeight)
cw_f <- list(Chick = as.character(sort(as.integer(levels(cw$Chick)))))
cw0 <- data.frame(id = seq_len(nrow(cw)), weight = cw$weight, Time = cw$Time,
                  Chick = as.character(cw$Chick))
chickweight <- write_data(cw0, "chickweight", cw_f)

## Beta data sets.  betareg (GasolineYield, ReadingSkills) is not available as a
## Debian package here, so two real data sets from AER are used instead.
suppressPackageStartupMessages(library(AER))
data("USSeatBelts", package = "AER")
sb <- USSeatBelts[!is.na(USSeatBelts$seatbelt), ]
sb_year <- as.numeric(as.character(sb$year))
sb_f <- list(enforce = levels(sb$enforce), state = levels(droplevels(sb$state)))
sb0 <- data.frame(id = seq_len(nrow(sb)), seatbelt = sb$seatbelt,
                  year_s = as.numeric(scale(sb_year)),
                  enforce = as.character(sb$enforce),
                  state = as.character(sb$state))
seatbelts <- write_data(sb0, "usseatbelts", sb_f)

data("Fatalities", package = "AER")
fa <- Fatalities
fa_year <- as.numeric(as.character(fa$year))
fa_f <- list(state = levels(droplevels(fa$state)))
fa0 <- data.frame(id = seq_len(nrow(fa)), youngdrivers = fa$youngdrivers,
                  year_s = as.numeric(scale(fa_year)),
                  state = as.character(fa$state))
fatalities <- write_data(fa0, "fatalities", fa_f)

# ================================================================ NB cases
if (want("nb_salamanders")) write_case(fit_tmb(
  "nb_salamanders",
  quote(glmmTMB(count ~ mined + (1 | site), data = salamanders, family = nbinom2)),
  "salamanders", salamanders, "salamanders.csv", "glmmTMB::Salamanders",
  "negative_binomial", "theta",
  notes = paste("nbinom2: Var(y) = mu + mu^2/theta; dispersion = theta = sigma(fit).",
                levels_note(sal_f["mined"]))))

if (want("nb_salamanders_spp")) write_case(fit_tmb(
  "nb_salamanders_spp",
  quote(glmmTMB(count ~ spp + mined + (1 | site), data = salamanders, family = nbinom2)),
  "salamanders", salamanders, "salamanders.csv", "glmmTMB::Salamanders",
  "negative_binomial", "theta",
  notes = paste("nbinom2: Var(y) = mu + mu^2/theta; dispersion = theta = sigma(fit).",
                levels_note(sal_f[c("spp", "mined")]))))

if (want("nb_salamanders_lme4")) write_case(fit_nb_lme4(
  "nb_salamanders_lme4",
  quote(glmer.nb(count ~ mined + (1 | site), data = salamanders)),
  "salamanders", salamanders, "salamanders.csv", "glmmTMB::Salamanders",
  notes = paste("Same model as nb_salamanders (glmmTMB).",
                "dispersion = getME(fit, 'glmer.nb.theta') (Var = mu + mu^2/theta);",
                "sigma(fit) is 1 for this family in lme4.",
                levels_note(sal_f["mined"]))))

gt_note <- paste("height_s = as.numeric(scale(HEIGHT)) (CSV column);",
                 "YEAR is a factor.", levels_note(gt_f["YEAR"]))
if (want("nb_grouseticks")) write_case(fit_tmb(
  "nb_grouseticks",
  quote(glmmTMB(TICKS ~ YEAR + height_s + (1 | BROOD), data = grouseticks, family = nbinom2)),
  "grouseticks", grouseticks, "grouseticks.csv", "lme4::grouseticks",
  "negative_binomial", "theta",
  notes = paste("nbinom2: Var(y) = mu + mu^2/theta; dispersion = theta = sigma(fit).",
                gt_note)))

if (want("nb_grouseticks_lme4")) write_case(fit_nb_lme4(
  "nb_grouseticks_lme4",
  quote(glmer.nb(TICKS ~ YEAR + height_s + (1 | BROOD), data = grouseticks)),
  "grouseticks", grouseticks, "grouseticks.csv", "lme4::grouseticks",
  notes = paste("Same model as nb_grouseticks (glmmTMB).",
                "dispersion = getME(fit, 'glmer.nb.theta') (Var = mu + mu^2/theta);",
                "sigma(fit) is 1 for this family in lme4.", gt_note)))

if (want("nb_epil")) write_case(fit_tmb(
  "nb_epil",
  quote(glmmTMB(y ~ trt + base_s + age_s + (1 | subject), data = epil, family = nbinom2)),
  "epil", epil, "epil.csv", "MASS::epil",
  "negative_binomial", "theta",
  notes = paste("nbinom2: Var(y) = mu + mu^2/theta; dispersion = theta = sigma(fit).",
                "base_s = as.numeric(scale(log(base))), age_s = as.numeric(scale(log(age)))",
                "(CSV columns); subject is a factor (59 patients, 4 periods each).",
                levels_note(ep_f["trt"]))))

# ================================================================ Gamma cases
gamma_note <- paste("Gamma: glmmTMB estimates the shape; sigma(fit) = 1/sqrt(shape)",
                    "(the coefficient of variation); dispersion = shape = 1/sigma^2;",
                    "Var(y) = mu^2/shape.")
if (want("gamma_sleep")) write_case(fit_tmb(
  "gamma_sleep",
  quote(glmmTMB(Reaction ~ Days + (1 | Subject), data = sleepstudy, family = Gamma(link = "log"))),
  "sleepstudy", sleepstudy, "sleepstudy.csv", "lme4::sleepstudy",
  "Gamma", "shape", notes = gamma_note))

if (want("gamma_sleep_slope")) write_case(fit_tmb(
  "gamma_sleep_slope",
  quote(glmmTMB(Reaction ~ Days + (Days | Subject), data = sleepstudy, family = Gamma(link = "log"))),
  "sleepstudy", sleepstudy, "sleepstudy.csv", "lme4::sleepstudy",
  "Gamma", "shape",
  notes = paste(gamma_note, "Correlated random intercept and Days slope;",
                "ranef_corr key Subject.(Intercept).Days.")))

if (want("gamma_chickweight")) write_case(fit_tmb(
  "gamma_chickweight",
  quote(glmmTMB(weight ~ Time + (1 | Chick), data = chickweight, family = Gamma(link = "log"))),
  "chickweight", chickweight, "chickweight.csv", "datasets::ChickWeight",
  "Gamma", "shape",
  notes = paste(gamma_note, "Chick is a plain unordered factor of its labels",
                "(50 chicks, unbalanced: 578 rows).")))

if (want("gamma_sleep_inverse")) {
  # With glmmTMB's default start (beta = 0, i.e. 1/mu = 0) the fit fails
  # (nlminb: 'function evaluation limit reached', NA/NaN evaluations,
  # non-positive-definite Hessian).  Start the fixed effects at the GLM fit
  # (rounded to 6 significant digits and written into the call).
  env0 <- new.env(); assign("sleepstudy", sleepstudy, envir = env0)
  req <- quote(glmmTMB(Reaction ~ Days + (1 | Subject), data = sleepstudy,
                       family = Gamma(link = "inverse")))
  req_w <- character(0)
  req_fit <- withCallingHandlers(eval(req, env0), warning = function(w) {
    req_w <<- c(req_w, conditionMessage(w)); invokeRestart("muffleWarning")
  })
  g0 <- glm(Reaction ~ Days, family = Gamma(link = "inverse"), data = sleepstudy)
  st <- unname(signif(coef(g0), 6))
  # check in a well-scaled parameterisation: response in seconds (default
  # start); its logLik minus 180 * log(1000) (Jacobian) is on the ms scale
  d_s <- transform(sleepstudy, Reaction_s = Reaction / 1000)
  chk <- glmmTMB(Reaction_s ~ Days + (1 | Subject), data = d_s,
                 family = Gamma(link = "inverse"))
  chk_ll <- as.numeric(logLik(chk)) - nrow(d_s) * log(1000)
  cl <- bquote(glmmTMB(Reaction ~ Days + (1 | Subject), data = sleepstudy,
                       family = Gamma(link = "inverse"), start = list(beta = .(st))))
  write_case(fit_tmb(
    "gamma_sleep_inverse", cl,
    "sleepstudy", sleepstudy, "sleepstudy.csv", "lme4::sleepstudy",
    "Gamma", "shape",
    notes = paste(gamma_note, "Inverse link: 1/mu = X beta + b (canonical link,",
                  "so observed and expected information coincide); the estimates",
                  "are on the 1/ms scale (intercept about 0.004, Subject SD about 5e-4).",
                  sprintf("The plain call %s (default start beta = 0, where 1/mu = 0)",
                          call_text(req)),
                  sprintf("does not converge: nlminb code %d ('%s'), logLik %s, warnings: %s.",
                          req_fit$fit$convergence, req_fit$fit$message,
                          format(as.numeric(logLik(req_fit))),
                          paste(unique(req_w), collapse = " | ")),
                  "The fixed effects therefore start at the GLM estimates",
                  "coef(glm(Reaction ~ Days, family = Gamma(link = 'inverse'))) rounded",
                  "to 6 significant digits (in the call). The problem is badly scaled",
                  "(parameters of order 1e-4): from start beta = c(0.0035, -1e-4) nlminb",
                  "reports convergence (code 0) at a lower logLik (about -883.30).",
                  sprintf(paste("Check: the same model with the response in seconds",
                                "(Reaction/1000, default start) converges (code %d) to",
                                "logLik %.10f after the Jacobian term -180*log(1000),",
                                "intercept %.10g, Days %.10g (per ms), shape %.8g."),
                          chk$fit$convergence, chk_ll, fixef(chk)$cond[[1]] / 1000,
                          fixef(chk)$cond[[2]] / 1000, 1 / sigma(chk)^2))))
}

# ================================================================ beta cases
beta_note <- paste("beta_family() (logit link), Ferrari & Cribari-Neto parameterisation:",
                   "Var(y) = mu(1-mu)/(1+phi); dispersion = phi = sigma(fit).",
                   "Substitute for betareg::GasolineYield / ReadingSkills: betareg is",
                   "not installable here (no Debian package), so real AER data sets are used.")
if (want("beta_seatbelts")) write_case(fit_tmb(
  "beta_seatbelts",
  quote(glmmTMB(seatbelt ~ year_s + enforce + (1 | state), data = usseatbelts, family = beta_family())),
  "usseatbelts", seatbelts, "usseatbelts.csv", "AER::USSeatBelts",
  "beta", "phi",
  notes = paste(beta_note,
                "Rows with missing seatbelt (usage rate) dropped (765 -> 556 rows);",
                "seatbelt lies in [0.06, 0.87]. year_s = as.numeric(scale(year))",
                "with year as a number (1983-1997), scaled over the rows kept.",
                levels_note(sb_f["enforce"]))))

if (want("beta_youngdrivers")) write_case(fit_tmb(
  "beta_youngdrivers",
  quote(glmmTMB(youngdrivers ~ year_s + (1 | state), data = fatalities, family = beta_family())),
  "fatalities", fatalities, "fatalities.csv", "AER::Fatalities",
  "beta", "phi",
  notes = paste(beta_note,
                "youngdrivers = fraction of drivers aged 15-24 (48 US states x 7 years,",
                "1982-1988). year_s = as.numeric(scale(year)) with year as a number.")))

# ================================================================ inverse Gaussian
# glmmTMB 1.1.5 has no inverse-Gaussian family ("Family not implemented!"), so
# the reference comes from a direct marginal likelihood:
#   y_ij | b_i ~ IG(mean mu_ij, shape lambda),  log mu_ij = x_ij' beta + b_i,
#   b_i ~ N(0, s^2),
#   f(y; mu, lambda) = sqrt(lambda / (2 pi y^3)) exp(-lambda (y - mu)^2 / (2 mu^2 y)),
# each subject's integral over b_i by 60-point adaptive Gauss-Hermite quadrature
# centred at the mode of the integrand (scale from its curvature there).
gh_nodes <- function(n) {
  # Golub-Welsch for weight exp(-z^2)
  off <- sqrt(seq_len(n - 1) / 2)
  J <- matrix(0, n, n)
  J[cbind(1:(n - 1), 2:n)] <- off
  J[cbind(2:n, 1:(n - 1))] <- off
  e <- eigen(J, symmetric = TRUE)
  o <- order(e$values)
  list(z = e$values[o], w = sqrt(pi) * e$vectors[1, o]^2)
}
ig_logdens <- function(y, mu, lambda) {
  0.5 * log(lambda) - 0.5 * log(2 * pi * y^3) - lambda * (y - mu)^2 / (2 * mu^2 * y)
}
ig_subject <- function(y, eta0, s, lambda) {
  # log integrand as a function of b (vectorised over b)
  h <- function(b) {
    vapply(b, function(bb) sum(ig_logdens(y, exp(eta0 + bb), lambda)), 0) +
      dnorm(b, 0, s, log = TRUE)
  }
  g <- function(b) { mu <- exp(eta0 + b); sum(lambda * (y / mu - 1) / mu) - b / s^2 }
  H <- function(b) { mu <- exp(eta0 + b); sum(lambda * (1 / mu - 2 * y / mu^2)) - 1 / s^2 }
  lim <- max(10 * s, 2)
  b <- optimize(h, c(-lim, lim), maximum = TRUE, tol = 1e-10)$maximum
  for (it in 1:20) {  # Newton polish
    hb <- H(b)
    if (!is.finite(hb) || hb >= 0) break
    step <- g(b) / hb
    b <- b - step
    if (abs(step) < 1e-13) break
  }
  list(h = h, mode = b, curv = H(b))
}
ig_marginal <- function(par, X, y, grp, gh) {
  k <- ncol(X)
  beta <- par[1:k]; s <- exp(par[k + 1]); lambda <- exp(par[k + 2])
  eta <- drop(X %*% beta)
  # outside the representable range (e.g. a long trial step of the optimizer):
  # report -Inf so that optim() backtracks
  if (!all(is.finite(c(exp(eta), s, lambda, 1 / s)))) return(-Inf)
  tot <- 0
  for (lev in levels(grp)) {
    i <- which(grp == lev)
    ss <- ig_subject(y[i], eta[i], s, lambda)
    if (!is.finite(ss$curv) || ss$curv >= 0) return(-Inf)
    sd_hat <- 1 / sqrt(-ss$curv)
    bk <- ss$mode + sqrt(2) * sd_hat * gh$z
    lv <- log(gh$w) + gh$z^2 + ss$h(bk)
    m <- max(lv)
    tot <- tot + log(sqrt(2) * sd_hat) + m + log(sum(exp(lv - m)))
  }
  if (!is.finite(tot)) -Inf else tot
}
ig_marginal_integrate <- function(par, X, y, grp) {
  k <- ncol(X)
  beta <- par[1:k]; s <- exp(par[k + 1]); lambda <- exp(par[k + 2])
  eta <- drop(X %*% beta)
  tot <- 0
  for (lev in levels(grp)) {
    i <- which(grp == lev)
    ss <- ig_subject(y[i], eta[i], s, lambda)
    h0 <- ss$h(ss$mode)
    sd_hat <- 1 / sqrt(-ss$curv)
    I <- integrate(function(b) exp(ss$h(b) - h0), ss$mode - 40 * sd_hat,
                   ss$mode + 40 * sd_hat, rel.tol = 1e-12, subdivisions = 1000L)$value
    tot <- tot + h0 + log(I)
  }
  tot
}
fit_ig <- function(X, y, grp, start, gh) {
  nll <- function(p) -ig_marginal(p, X, y, grp, gh)
  o <- optim(start, nll, method = "BFGS",
             control = list(reltol = 1e-12, maxit = 2000, ndeps = rep(1e-5, length(start))))
  # polish: Newton steps with Richardson-extrapolated derivatives (numDeriv);
  # a step is kept only if it does not lower the log-likelihood
  o$newton_steps <- 0L
  for (it in 1:5) {
    gr <- numDeriv::grad(nll, o$par)
    if (max(abs(gr)) < 1e-8) break
    step <- solve(numDeriv::hessian(nll, o$par), gr)
    p1 <- o$par - step
    f1 <- nll(p1)
    if (!is.finite(f1) || f1 > o$value) break
    o$par <- p1; o$value <- f1; o$newton_steps <- o$newton_steps + 1L
  }
  o
}

if (want("ig_sleep")) {
  d <- sleepstudy
  X <- model.matrix(~ Days, d)
  y <- d$Reaction
  grp <- d$Subject
  gh <- gh_nodes(60)
  g0 <- glm(Reaction ~ Days, family = inverse.gaussian(link = "log"), data = d)
  start <- c(coef(g0), log(0.1), log(1 / summary(g0)$dispersion))
  names(start) <- c(colnames(X), "log_s", "log_lambda")
  ig_msgs <- character(0)
  times <- numeric(N_TIMING)
  for (k in seq_len(N_TIMING)) {
    times[k] <- system.time(o <- withCallingHandlers(
      fit_ig(X, y, grp, start, gh),
      warning = function(w) {
        ig_msgs <<- c(ig_msgs, paste("warning:", conditionMessage(w)))
        invokeRestart("muffleWarning")
      }))[["elapsed"]]
  }
  ig_msgs <- unique(ig_msgs)
  nll <- function(p) -ig_marginal(p, X, y, grp, gh)
  Hs <- optimHess(o$par, nll, control = list(ndeps = rep(1e-4, length(o$par))))
  Vall <- solve(Hs)
  k <- ncol(X)
  est <- o$par
  se_all <- sqrt(diag(Vall))
  ll <- -o$value
  # checks: stats::integrate at the optimum, 30 vs 60 nodes, a second optimizer,
  # gradient and Richardson Hessian (numDeriv)
  ll_int <- ig_marginal_integrate(est, X, y, grp)
  ll_30 <- ig_marginal(est, X, y, grp, gh_nodes(30))
  o2 <- nlminb(start, nll, control = list(rel.tol = 1e-14, iter.max = 1000, eval.max = 2000))
  grad <- numDeriv::grad(nll, est)
  Hnd <- numDeriv::hessian(nll, est)
  se_nd <- sqrt(diag(solve(Hnd)))
  # lme4 cross-check (glmer's IG log-likelihood profiles the dispersion as
  # deviance/n inside family$aic; not the same criterion)
  gm <- tryCatch(suppressWarnings(glmer(Reaction ~ Days + (1 | Subject), data = d,
                                        family = inverse.gaussian(link = "log"))),
                 error = function(e) NULL)
  gm_txt <- if (is.null(gm)) "glmer(inverse.gaussian(log)) failed." else
    sprintf(paste("Cross-check lme4 glmer(Reaction ~ Days + (1 | Subject), family =",
                  "inverse.gaussian(link = 'log')) (Laplace, dispersion not ML):",
                  "logLik %.6f, fixef (%.6f, %.7f), Subject sd %.6f, sigma %.6g."),
            as.numeric(logLik(gm)), fixef(gm)[1], fixef(gm)[2],
            attr(VarCorr(gm)$Subject, "stddev"), sigma(gm))
  lambda <- exp(est[k + 2]); s <- exp(est[k + 1])
  res <- list(
    case = "ig_sleep",
    engine = "R integrate (direct marginal likelihood)",
    r_version = r_version,
    call = paste("optim(start, nll, method = 'BFGS', control = list(reltol = 1e-12,",
                 "maxit = 2000, ndeps = rep(1e-5, 4))) with nll = minus the",
                 "60-point adaptive Gauss-Hermite marginal log-likelihood",
                 "(see ig_marginal() in tools/r_references/glmm_families.R);",
                 "start from glm(Reaction ~ Days, family = inverse.gaussian(link = 'log'), data = sleepstudy)"),
    dataset = "sleepstudy.csv", dataset_source = "lme4::sleepstudy",
    formula = "Reaction ~ Days + (1 | Subject)",
    family = "inverse_gaussian", link = "log", method = "AGQ", nAGQ = 60L,
    loglik = ll, df = length(est),
    fixef = named_num(est[1:k]), se = named_num(se_all[1:k]),
    ranef_sd = list("Subject.(Intercept)" = unname(s)),
    ranef_corr = structure(list(), names = character(0)),
    dispersion_name = "lambda", dispersion = unname(lambda),
    sigma = unname(1 / sqrt(lambda)),
    nobs = length(y), ngroups = list(Subject = nlevels(grp)),
    converged = o$convergence == 0 && max(abs(grad)) < 1e-3,
    messages = ig_msgs,
    notes = paste(
      "glmmTMB 1.1.5 has no inverse-Gaussian family (glmmTMB(..., family =",
      "inverse.gaussian(link = 'log')) stops with 'Family not implemented!'),",
      "so this is an independent maximum-likelihood reference written in R.",
      "Model: y_ij | b_i ~ IG(mean mu_ij, shape lambda), density",
      "sqrt(lambda/(2 pi y^3)) exp(-lambda (y-mu)^2/(2 mu^2 y)), Var(y|b) = mu^3/lambda;",
      "log mu_ij = beta0 + beta1 Days_ij + b_i, b_i ~ N(0, s^2).",
      "dispersion = lambda (the IG shape); R's glm dispersion phi = 1/lambda;",
      "sigma = 1/sqrt(lambda) = sqrt(phi) (as lme4's sigma() for this family).",
      "loglik is the full marginal log-likelihood (all constants, incl. -1.5 sum log y).",
      "Each subject's integral over b_i: 60-point Gauss-Hermite rule centred at",
      "the mode of the integrand, scaled by 1/sqrt(-d2 log integrand) there;",
      "maximised with optim BFGS (numerical gradient, ndeps 1e-5, reltol 1e-12) over",
      "(beta, log s, log lambda). SEs: sqrt(diag(solve(optimHess(...)))) with",
      "ndeps 1e-4 (beta block; invariant to the parameterisation of s, lambda).",
      "df = 4 (2 fixed effects, s, lambda).",
      sprintf("Estimates on the working scale: log s = %.10f (SE %.6g), log lambda = %.10f (SE %.6g).",
              est[k + 1], se_all[k + 1], est[k + 2], se_all[k + 2]),
      sprintf("Checks: stats::integrate (rel.tol 1e-12) at the optimum gives logLik %.10f",
              ll_int),
      sprintf("(differs by %.2e); 30-point AGQ %.10f (differs by %.2e);", ll_int - ll,
              ll_30, ll_30 - ll),
      sprintf("nlminb from the same start: logLik %.10f (differs by %.2e), max |par diff| %.2e;",
              -o2$objective, -o2$objective - ll, max(abs(o2$par - est))),
      sprintf("max |gradient| at the optimum (numDeriv) %.2e; numDeriv Hessian SEs of beta",
              max(abs(grad))),
      sprintf("(%s) differ from optimHess SEs by at most %.2e relative.",
              paste(sprintf("%.8g", se_nd[1:k]), collapse = ", "),
              max(abs(se_nd[1:k] / se_all[1:k] - 1))),
      sprintf("optim: convergence %d, %d function evaluations, then %d Newton polishing step(s) (numDeriv gradient/Hessian; kept only if the log-likelihood does not decrease).",
              o$convergence, o$counts[[1]], o$newton_steps),
      if (any(grepl("NA/Inf replaced", ig_msgs))) paste(
        "The warning 'NA/Inf replaced by maximum positive value' comes from optim()",
        "when a trial step leaves the representable range (the likelihood returns",
        "-Inf there and BFGS backtracks); it does not affect the optimum.") else "",
      gm_txt,
      sprintf("Timing runs (s): %s.", paste(round(times, 3), collapse = ", "))),
    timing_s = median(times))
  write_case(res)
}

cat("done\n")
