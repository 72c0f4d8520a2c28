# Reference fits from R's nlme: residual correlation structures (corStruct)
# and variance functions (varFunc), for lme and gls.
#
# Run from anywhere (single-threaded):
#   OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 Rscript tools/r_references/nlme_structures.R [CASE ...]
#
# Writes
#   tests/data/nlme/{ovary,orthodont,bodyweight,dialyzer,wheat2}.csv   the data behind the fits
#   tests/reference/nlme/<case>.json                                   one file per case
#
# Layout: that of the shared sleep_nlme_ar1.json (see tests/reference/README.md)
# where it applies, plus
#   fixed, random, group            the model parts as text (random null for gls)
#   correlation                     {class, form (as given, or nlme's default ~1),
#                                    form_default, form_fitted (formula of the fitted
#                                    corStruct: lme adds the random-effects grouping),
#                                    p, q, nugget, value (initial values) where used}
#   weights                         {class, form, form_default} or null
#   corStruct, corStruct_unconstrained
#                                   coef(fit$modelStruct$corStruct, unconstrained = FALSE / TRUE),
#                                   named (corARMA: Phi1, Theta1; corSymm: cor(1,2), ...;
#                                   spatial: range, nugget)
#   varStruct, varStruct_unconstrained
#                                   coef(fit$modelStruct$varStruct, unconstrained = FALSE,
#                                   allCoef = TRUE) / (unconstrained = TRUE) named
#   modelStruct_unconstrained       coef(fit$modelStruct): the whole vector nlme optimises
#   apVar, apVar_names              (where nlme computed it) fit$apVar: approximate covariance
#                                   of the unconstrained modelStruct parameters and log(sigma)
#   resid_normalized_head, resid_pearson_head   first 20 of resid(fit, type = ...)
#   df                              lme: the DF column of summary(fit)$tTable; gls has no such
#                                   column: summary.gls uses N - p for every coefficient
#   intervals                       intervals(fit, which = "all"): fixed (gls: coef), reStruct,
#                                   corStruct, varStruct, sigma, each [lower, est., upper];
#                                   intervals_status says when it failed (then only the
#                                   fixed-effect rows, from which = "fixed", are given)
#   check_original_data             the requested call evaluated on nlme's own groupedData
#                                   (with sin(2*pi*Time), I(pressure^2), ...) compared with
#                                   the fit on the CSV as read back
#   status                          "ok", "failed" (error recorded) or "skipped" (slower than
#                                   the time limit)
# Every model is fitted to the CSV *as read back*, with factor levels set from the
# order recorded in factor_levels (the grouping factors are ordered factors in nlme;
# they are read back as unordered factors with the same level order: as grouping
# factors this changes nothing but the order of ranef).  Rows keep nlme's order
# (the default correlation covariate is the position of the row within its group).
#
# Numbers: jsonlite 1.8.4 writes at most 15 significant digits even with
# digits = NA, which does not round-trip, so numbers are handed to write_json as
# verbatim JSON in the shortest of 15/16/17 significant digits that reads back to
# the same double (json_verbatim = TRUE); otherwise write_json(x, path, digits = NA, auto_unbox = TRUE,
# null = "null", na = "null", pretty = TRUE).

Sys.setenv(OMP_NUM_THREADS = "1", OPENBLAS_NUM_THREADS = "1")
options(warn = 1)

suppressPackageStartupMessages({
  library(nlme)
  library(jsonlite)
})

args_all <- commandArgs(trailingOnly = FALSE)
script_path <- sub("^--file=", "", args_all[grep("^--file=", args_all)])
root <- if (length(script_path)) {
  normalizePath(file.path(dirname(script_path), "..", ".."))
} else {
  getwd()
}
data_dir <- file.path(root, "tests", "data", "nlme")
ref_dir <- file.path(root, "tests", "reference", "nlme")
dir.create(data_dir, recursive = TRUE, showWarnings = FALSE)
dir.create(ref_dir, recursive = TRUE, showWarnings = FALSE)

N_TIMING <- 5L
TIME_LIMIT_S <- 120
only <- commandArgs(trailingOnly = TRUE)  # optional: case names to run

ver <- function(p) utils::packageDescription(p)$Version
package_versions <- list(nlme = ver("nlme"), lattice = ver("lattice"),
                         jsonlite = ver("jsonlite"))
blas <- tryCatch(La_library(), error = function(e) NA_character_)

# ---------------------------------------------------------------- JSON output
source(file.path(root, "tools", "r_references", "json_out.R"))  # num_json, prep_json, named_num
write_case <- function(x, case) {
  path <- file.path(ref_dir, paste0(case, ".json"))
  write_json(prep_json(x), path, digits = NA, auto_unbox = TRUE, null = "null",
             na = "null", pretty = TRUE, json_verbatim = TRUE)
  cat(sprintf("wrote %s\n", path))
}
named_num <- function(v) {
  if (is.null(v) || length(v) == 0) return(NULL)
  out <- as.list(unname(as.numeric(v)))
  names(out) <- names(v)
  out
}
# matrix with rows lower, est., upper -> {row: [lower, est, upper]}
triples <- function(m) {
  m <- as.matrix(m)
  setNames(lapply(seq_len(nrow(m)), function(i) I(unname(as.numeric(m[i, ])))), rownames(m))
}

# ---------------------------------------------------------------- data output
# write the CSV (15 significant digits, unquoted), read it back and set the
# factor levels from the recorded order
write_data <- function(df, name, factors) {
  path <- file.path(data_dir, paste0(name, ".csv"))
  stopifnot(!any(vapply(df, function(col) any(grepl("[,\"]", as.character(col))), TRUE)))
  write.csv(df, path, row.names = FALSE, quote = FALSE)
  d <- read.csv(path, stringsAsFactors = FALSE, colClasses = "character")
  for (col in names(d)) {
    if (col %in% names(factors)) {
      d[[col]] <- factor(d[[col]], levels = factors[[col]])
      stopifnot(!anyNA(d[[col]]))
    } else {
      d[[col]] <- as.numeric(d[[col]])
    }
  }
  d
}

# nlme's own data sets, kept apart from the CSV-read data frames of the same name
orig <- new.env()
for (nm in c("Ovary", "Orthodont", "BodyWeight", "Dialyzer", "Wheat2")) {
  data(list = nm, package = "nlme", envir = orig)
}

datasets <- list()
prep_dataset <- function(name, src_name, derived = list(), prep = "none") {
  src <- as.data.frame(get(src_name, envir = orig))
  fac <- names(src)[vapply(src, is.factor, TRUE)]
  levs <- lapply(setNames(fac, fac), function(v) levels(src[[v]]))
  ordered_src <- fac[vapply(src[fac], is.ordered, TRUE)]
  df <- src
  for (v in fac) df[[v]] <- as.character(df[[v]])
  for (v in names(derived)) df[[v]] <- derived[[v]](src)
  d <- write_data(df, name, levs)
  # the CSV holds the data: numbers equal to 15 significant digits
  for (v in setdiff(names(d), fac)) stopifnot(isTRUE(all.equal(d[[v]], df[[v]], tolerance = 1e-14)))
  for (v in fac) stopifnot(identical(as.character(d[[v]]), as.character(src[[v]])))
  datasets[[name]] <<- list(
    file = paste0(name, ".csv"), source = paste0("nlme::", src_name),
    factor_levels = lapply(levs, I), ordered_in_source = I(ordered_src),
    data_prep = prep, nrow = nrow(d))
  assign(src_name, d, envir = globalenv())
  invisible(d)
}

prep_dataset("ovary", "Ovary",
             list(sin2pt = function(s) sin(2 * pi * s$Time),
                  cos2pt = function(s) cos(2 * pi * s$Time)),
             "columns of nlme::Ovary in its row order (by Mare, then Time); derived sin2pt = sin(2*pi*Time), cos2pt = cos(2*pi*Time) computed from nlme's Time")
prep_dataset("orthodont", "Orthodont", prep = "columns of nlme::Orthodont in its row order (by Subject, then age 8, 10, 12, 14)")
prep_dataset("bodyweight", "BodyWeight", prep = "columns of nlme::BodyWeight in its row order (by Rat, then Time)")
prep_dataset("dialyzer", "Dialyzer",
             list(p2 = function(s) s$pressure^2, p3 = function(s) s$pressure^3,
                  p4 = function(s) s$pressure^4),
             "columns of nlme::Dialyzer in its row order (by Subject, then index/pressure); derived p2 = pressure^2, p3 = pressure^3, p4 = pressure^4 computed from nlme's pressure")
prep_dataset("wheat2", "Wheat2", prep = "columns of nlme::Wheat2 in its row order")

# ---------------------------------------------------------------- cases
cases <- list(
  list(case = "ovary_gls_ar1", data = "ovary", fun = "gls",
       call = "gls(follicles ~ sin2pt + cos2pt, Ovary, correlation = corAR1(form = ~ 1 | Mare))",
       requested = "gls(follicles ~ sin(2*pi*Time) + cos(2*pi*Time), Ovary, correlation = corAR1(form = ~ 1 | Mare))",
       fixed = "follicles ~ sin2pt + cos2pt", random = NULL, group = "Mare",
       correlation = list(class = "corAR1", form = "~ 1 | Mare", form_default = FALSE),
       weights = NULL),
  list(case = "ovary_lme_ar1", data = "ovary", fun = "lme",
       call = "lme(follicles ~ sin2pt + cos2pt, Ovary, random = ~ 1 | Mare, correlation = corAR1())",
       requested = "lme(follicles ~ sin(2*pi*Time) + cos(2*pi*Time), Ovary, random = ~ 1 | Mare, correlation = corAR1())",
       fixed = "follicles ~ sin2pt + cos2pt", random = "~ 1 | Mare", group = "Mare",
       correlation = list(class = "corAR1", form = "~1", form_default = TRUE),
       weights = NULL),
  list(case = "ovary_lme_arma11", data = "ovary", fun = "lme",
       call = "lme(follicles ~ sin2pt + cos2pt, Ovary, random = ~ 1 | Mare, correlation = corARMA(p = 1, q = 1))",
       requested = "lme(follicles ~ sin(2*pi*Time) + cos(2*pi*Time), Ovary, random = ~ 1 | Mare, correlation = corARMA(p = 1, q = 1))",
       fixed = "follicles ~ sin2pt + cos2pt", random = "~ 1 | Mare", group = "Mare",
       correlation = list(class = "corARMA", form = "~1", form_default = TRUE, p = 1L, q = 1L),
       weights = NULL),
  list(case = "orthodont_varident", data = "orthodont", fun = "lme",
       call = "lme(distance ~ age, Orthodont, random = ~ 1 | Subject, weights = varIdent(form = ~ 1 | Sex))",
       fixed = "distance ~ age", random = "~ 1 | Subject", group = "Subject",
       correlation = NULL,
       weights = list(class = "varIdent", form = "~ 1 | Sex", form_default = FALSE)),
  list(case = "orthodont_gls_compsymm_ml", data = "orthodont", fun = "gls",
       call = "gls(distance ~ age * Sex, Orthodont, correlation = corCompSymm(form = ~ 1 | Subject), method = \"ML\")",
       fixed = "distance ~ age * Sex", random = NULL, group = "Subject",
       correlation = list(class = "corCompSymm", form = "~ 1 | Subject", form_default = FALSE),
       weights = NULL),
  list(case = "orthodont_gls_symm", data = "orthodont", fun = "gls",
       call = "gls(distance ~ age * Sex, Orthodont, correlation = corSymm(form = ~ 1 | Subject), weights = varIdent(form = ~ 1 | age))",
       fixed = "distance ~ age * Sex", random = NULL, group = "Subject",
       correlation = list(class = "corSymm", form = "~ 1 | Subject", form_default = FALSE),
       weights = list(class = "varIdent", form = "~ 1 | age", form_default = FALSE),
       note = "Unstructured 4 x 4 residual covariance (Pinheiro & Bates): corSymm over the position of the row within Subject (1..4 = ages 8, 10, 12, 14) and one variance per age (varIdent strata are the age values; the first, age 8, is the reference with ratio 1)."),
  list(case = "bodyweight_car1_power", data = "bodyweight", fun = "lme",
       call = "lme(weight ~ Time * Diet, BodyWeight, random = ~ Time | Rat, weights = varPower(), correlation = corCAR1(form = ~ Time))",
       fixed = "weight ~ Time * Diet", random = "~ Time | Rat", group = "Rat",
       correlation = list(class = "corCAR1", form = "~ Time", form_default = FALSE),
       weights = list(class = "varPower", form = "~fitted(.)", form_default = TRUE),
       note = "varPower() uses nlme's default covariate fitted(.): the within-group fitted values (innermost level) of the current fit, so the variance weights are updated with the fixed and random effects during optimisation; corCAR1 over Time within Rat (nlme adds the random-effects grouping)."),
  list(case = "bodyweight_exp_gls", data = "bodyweight", fun = "gls",
       call = "gls(weight ~ Time * Diet, BodyWeight, correlation = corExp(form = ~ Time | Rat))",
       fixed = "weight ~ Time * Diet", random = NULL, group = "Rat",
       correlation = list(class = "corExp", form = "~ Time | Rat", form_default = FALSE, nugget = FALSE),
       weights = NULL),
  list(case = "dialyzer_gls_power", data = "dialyzer", fun = "gls",
       call = "gls(rate ~ (pressure + p2 + p3 + p4) * QB, Dialyzer, weights = varPower(form = ~ pressure))",
       requested = "gls(rate ~ (pressure + I(pressure^2) + I(pressure^3) + I(pressure^4)) * QB, Dialyzer, weights = varPower(form = ~ pressure))",
       fixed = "rate ~ (pressure + p2 + p3 + p4) * QB", random = NULL, group = NULL,
       correlation = NULL,
       weights = list(class = "varPower", form = "~ pressure", form_default = FALSE),
       note = "p2, p3, p4 are the CSV columns pressure^2, ^3, ^4; R would name the coefficients I(pressure^2) etc. in the requested call."),
  list(case = "dialyzer_lme_power_ar1", data = "dialyzer", fun = "lme",
       call = "lme(rate ~ (pressure + p2 + p3 + p4) * QB, Dialyzer, random = ~ pressure + p2 | Subject, weights = varPower(form = ~ pressure), correlation = corAR1())",
       requested = "lme(rate ~ (pressure + I(pressure^2) + I(pressure^3) + I(pressure^4)) * QB, Dialyzer, random = ~ pressure + I(pressure^2) | Subject, weights = varPower(form = ~ pressure), correlation = corAR1())",
       fixed = "rate ~ (pressure + p2 + p3 + p4) * QB", random = "~ pressure + p2 | Subject", group = "Subject",
       correlation = list(class = "corAR1", form = "~1", form_default = TRUE),
       weights = list(class = "varPower", form = "~ pressure", form_default = FALSE),
       note = "p2, p3, p4 are the CSV columns pressure^2, ^3, ^4. General (pdLogChol) 3 x 3 random-effects covariance; Pinheiro & Bates use pdDiag for this model."),
  list(case = "wheat2_gls_spher", data = "wheat2", fun = "gls",
       call = "gls(yield ~ variety - 1, Wheat2, correlation = corSpher(c(28, 0.2), form = ~ latitude + longitude, nugget = TRUE))",
       fixed = "yield ~ variety - 1", random = NULL, group = NULL,
       correlation = list(class = "corSpher", form = "~ latitude + longitude", form_default = FALSE,
                          nugget = TRUE, value = I(c(28, 0.2)), metric = "euclidean"),
       weights = NULL,
       note = "No grouping: one 224 x 224 spatial correlation matrix (Euclidean distance on latitude, longitude). Initial values range 28, nugget 0.2."),
  list(case = "wheat2_gls_ratio", data = "wheat2", fun = "gls",
       call = "gls(yield ~ variety - 1, Wheat2, correlation = corRatio(c(12.5, 0.2), form = ~ latitude + longitude, nugget = TRUE))",
       fixed = "yield ~ variety - 1", random = NULL, group = NULL,
       correlation = list(class = "corRatio", form = "~ latitude + longitude", form_default = FALSE,
                          nugget = TRUE, value = I(c(12.5, 0.2)), metric = "euclidean"),
       weights = NULL,
       note = "No grouping: one 224 x 224 spatial correlation matrix (Euclidean distance on latitude, longitude). Initial values range 12.5, nugget 0.2."),
  list(case = "bodyweight_varexp", data = "bodyweight", fun = "lme",
       call = "lme(weight ~ Time * Diet, BodyWeight, random = ~ 1 | Rat, weights = varExp(form = ~ Time))",
       fixed = "weight ~ Time * Diet", random = "~ 1 | Rat", group = "Rat",
       correlation = NULL,
       weights = list(class = "varExp", form = "~ Time", form_default = FALSE)),
  list(case = "orthodont_constpower", data = "orthodont", fun = "lme",
       call = "lme(distance ~ age, Orthodont, random = ~ 1 | Subject, weights = varConstPower(form = ~ age))",
       fixed = "distance ~ age", random = "~ 1 | Subject", group = "Subject",
       correlation = NULL,
       weights = list(class = "varConstPower", form = "~ age", form_default = FALSE),
       note = paste("Flat likelihood: the Orthodont residual variance hardly changes with age, so const, power and",
                    "sigma (residual sd = sigma * (const + age^power)) are weakly identified; nlme's apVar is not",
                    "positive definite, so intervals() gives only the fixed effects. With opt = \"optim\" nlme reaches",
                    "logLik -223.4709599 (2e-6 higher) at const 0.1023, power -0.1425, sigma 1.7521: compare",
                    "loglik and fixef tightly, const/sigma loosely (about 1e-2 relative)."))
)
names(cases) <- vapply(cases, function(x) x$case, "")

# ---------------------------------------------------------------- fitting
with_optim <- function(call_text, fun) {
  ctl <- if (fun == "lme") "lmeControl(opt = \"optim\")" else "glsControl(opt = \"optim\")"
  sub("\\)$", paste0(", control = ", ctl, ")"), call_text)
}

# evaluate call_text, collecting warnings / messages; errors propagate
eval_fit <- function(call_text, env = globalenv()) {
  warns <- character(0); msgs <- character(0)
  fit <- withCallingHandlers(
    eval(str2lang(call_text), env),
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, conditionMessage(m)); invokeRestart("muffleMessage") })
  list(fit = fit, warnings = unique(warns), messages = unique(msgs))
}

# warm-up fit under the time limit; NULL result + error text on failure
try_fit <- function(call_text) {
  setTimeLimit(elapsed = TIME_LIMIT_S, transient = TRUE)
  on.exit(setTimeLimit(elapsed = Inf))
  t0 <- proc.time()[["elapsed"]]
  r <- tryCatch(eval_fit(call_text), error = function(e) list(error = conditionMessage(e)))
  setTimeLimit(elapsed = Inf)
  r$elapsed <- proc.time()[["elapsed"]] - t0
  r$timeout <- !is.null(r$error) && grepl("time limit", r$error)
  r
}

time_calls <- function(call_texts) {
  times <- numeric(N_TIMING)
  for (i in seq_len(N_TIMING)) {
    env <- new.env(parent = globalenv())
    t0 <- proc.time()[["elapsed"]]
    for (ct in call_texts) suppressWarnings(eval(str2lang(ct), env))
    times[i] <- proc.time()[["elapsed"]] - t0
  }
  list(timing_s = median(times), timing_runs_s = I(times),
       timing_loadavg = trimws(readLines("/proc/loadavg")),
       timing_note = sprintf(paste("median elapsed seconds of %d fits of `call` after one warm-up fit,",
                                   "in one R process, data already loaded"), N_TIMING))
}

# fit a case: default optimiser, else opt = "optim"
fit_with_fallback <- function(cs) {
  r <- try_fit(cs$call)
  out <- list(call = cs$call, optimizer = "nlminb (nlme default)", r = r)
  if (!is.null(r$error) && !r$timeout) {
    alt <- with_optim(cs$call, cs$fun)
    r2 <- try_fit(alt)
    out <- list(call = alt, optimizer = "optim (BFGS), via control opt = \"optim\"",
                requested_call = cs$call, requested_call_error = r$error, r = r2)
  }
  out
}

# ---------------------------------------------------------------- extraction
varcorr_rows <- function(fit) {
  rows <- list()
  rs <- fit$modelStruct$reStruct
  for (g in names(rs)) {
    D <- as.matrix(rs[[g]]) * fit$sigma^2
    tn <- colnames(D)
    sd <- sqrt(diag(D))
    for (i in seq_along(tn)) {
      rows[[length(rows) + 1]] <- list(group = g, var1 = tn[i], var2 = NA_character_,
                                       vcov = D[i, i], sdcor = sd[[i]])
    }
    if (length(tn) > 1) {
      C <- cov2cor(D)
      for (i in 1:(length(tn) - 1)) for (j in (i + 1):length(tn)) {
        rows[[length(rows) + 1]] <- list(group = g, var1 = tn[i], var2 = tn[j],
                                         vcov = D[i, j], sdcor = C[i, j])
      }
    }
  }
  rows[[length(rows) + 1]] <- list(group = "Residual", var1 = NA_character_, var2 = NA_character_,
                                   vcov = fit$sigma^2, sdcor = fit$sigma)
  # agree with nlme's printed VarCorr (StdDev column, rounded)
  vc <- VarCorr(fit)
  sd_printed <- suppressWarnings(as.numeric(vc[, "StdDev"]))
  sd_mine <- vapply(Filter(function(r) is.na(r$var2), rows), function(r) r$sdcor, 0)
  stopifnot(length(sd_printed) == length(sd_mine),
            all(abs(sd_printed - sd_mine) <= 1e-5 * pmax(1, abs(sd_mine))))
  rows
}

ranef_list <- function(fit) {
  re <- ranef(fit)
  if (is.data.frame(re)) re <- setNames(list(re), names(fit$modelStruct$reStruct))
  out <- list()
  for (g in names(re)) {
    d <- re[[g]]
    out[[g]] <- setNames(lapply(seq_len(nrow(d)), function(i) {
      setNames(lapply(names(d), function(t) d[i, t]), names(d))
    }), rownames(d))
  }
  out
}

cor_coef <- function(cs, unconstrained) {
  if (is.null(cs)) return(NULL)
  v <- coef(cs, unconstrained = unconstrained)
  if (inherits(cs, "corSymm")) {
    # names as intervals(): cor(i,j) over the lower triangle by columns
    n <- round((1 + sqrt(1 + 8 * length(v))) / 2)
    nm <- character(0)
    for (i in 1:(n - 1)) for (j in (i + 1):n) nm <- c(nm, sprintf("cor(%d,%d)", i, j))
    names(v) <- nm
  }
  if (is.null(names(v))) {
    names(v) <- names(coef(cs, unconstrained = FALSE))
  }
  named_num(v)
}

var_coef <- function(vs, unconstrained) {
  if (is.null(vs)) return(NULL)
  v <- if (unconstrained) coef(vs, unconstrained = TRUE) else
    coef(vs, unconstrained = FALSE, allCoef = TRUE)
  if (is.null(names(v)) && unconstrained) {
    names(v) <- names(coef(vs, unconstrained = FALSE))
  }
  named_num(v)
}

intervals_list <- function(fit, is_lme) {
  iv <- tryCatch(intervals(fit, which = "all"), error = function(e) e)
  if (inherits(iv, "error")) {
    ivf <- tryCatch(intervals(fit, which = "fixed"), error = function(e) e)
    out <- list(columns = I(c("lower", "est.", "upper")))
    if (!inherits(ivf, "error")) {
      out$fixed <- triples(if (is_lme) ivf$fixed else ivf$coef)
    }
    return(list(status = paste0("intervals(fit, which = \"all\") failed: ", conditionMessage(iv),
                                if (!inherits(ivf, "error")) "; fixed-effect rows from which = \"fixed\"" else ""),
                intervals = out))
  }
  out <- list(fixed = triples(if (is_lme) iv$fixed else iv$coef))
  if (is_lme) {
    out$reStruct <- lapply(iv$reStruct, triples)
  }
  if (!is.null(iv$corStruct)) out$corStruct <- triples(iv$corStruct)
  if (!is.null(iv$varStruct)) out$varStruct <- triples(iv$varStruct)
  out$sigma <- I(unname(as.numeric(iv$sigma)))
  out$columns <- I(c("lower", "est.", "upper"))
  list(status = "ok (nlme::intervals(fit, which = 'all'); approximate, not profile)", intervals = out)
}

lme4_formula <- function(cs) {
  if (is.null(cs$random)) return(cs$fixed)
  parts <- strsplit(sub("^~\\s*", "", cs$random), "\\|")[[1]]
  sprintf("%s + (%s | %s)", cs$fixed, trimws(parts[1]), trimws(parts[2]))
}

extract <- function(fit, cs) {
  is_lme <- inherits(fit, "lme")
  sm <- summary(fit)
  tt <- sm$tTable
  nm <- rownames(tt)
  V <- vcov(fit)
  stopifnot(identical(rownames(V), nm))
  N <- fit$dims$N
  p <- length(nm)
  df <- if (is_lme) tt[, "DF"] else setNames(rep(N - p, p), nm)
  ll <- logLik(fit)
  out <- list(
    nobs = N,
    ngroups = NULL,
    fixef_names = I(nm),
    fixef = named_num(tt[, "Value"]),
    se = named_num(tt[, "Std.Error"]),
    df = as.list(setNames(as.integer(df), nm)),
    t = named_num(tt[, "t-value"]),
    p = named_num(tt[, "p-value"]),
    vcov = unname(V),
    vcov_names = I(nm),
    corr_fixef = unname(cov2cor(V))
  )
  if (!is_lme) {
    out$df_note <- "gls: summary.gls has no DF column; its t-tests use N - p degrees of freedom for every coefficient (given here)"
  }
  cst <- fit$modelStruct$corStruct
  if (is_lme) {
    Q <- fit$dims$Q
    out$ngroups <- as.list(fit$dims$ngrps[seq_len(Q)])
    out$varcorr <- varcorr_rows(fit)
    out$varcorr_note <- paste("from fit$modelStruct$reStruct (relative covariance) times sigma^2, in lme4's",
                              "as.data.frame(VarCorr) layout; agrees with VarCorr(fit) StdDev/Corr;",
                              "the Residual row is sigma, the scale of the residual standard deviation",
                              "before the variance function and correlation are applied")
  } else if (!is.null(cst) && !is.null(getGroups(cst))) {
    g <- getGroups(cst)
    out$ngroups <- setNames(list(length(unique(g))), cs$group)
  }
  out$sigma <- fit$sigma
  out$loglik <- as.numeric(ll)
  out$df_model <- attr(ll, "df")
  out$aic <- AIC(fit)
  out$bic <- BIC(fit)
  if (fit$method == "REML") out$reml_criterion <- -2 * as.numeric(ll) else
    out$deviance <- -2 * as.numeric(ll)
  out$df_resid <- N - attr(ll, "df")
  out$corStruct <- cor_coef(cst, FALSE)
  out$corStruct_unconstrained <- cor_coef(cst, TRUE)
  vst <- fit$modelStruct$varStruct
  out$varStruct <- var_coef(vst, FALSE)
  out$varStruct_unconstrained <- var_coef(vst, TRUE)
  out$modelStruct_unconstrained <- named_num(coef(fit$modelStruct))
  if (is.matrix(fit$apVar)) {
    out$apVar <- unname(fit$apVar)
    out$apVar_names <- I(rownames(fit$apVar))
  } else {
    out$apVar_status <- as.character(fit$apVar)
  }
  if (is_lme) {
    re <- ranef_list(fit)
    out$ranef <- re
    out$ranef_levels_total <- lapply(re, length)
  }
  iv <- intervals_list(fit, is_lme)
  out$intervals_status <- iv$status
  out$intervals <- iv$intervals
  fv <- fitted(fit)  # lme: innermost level
  out$fitted_head <- I(unname(as.numeric(head(fv, 20))))
  out$resid_head <- I(unname(as.numeric(head(resid(fit, type = "response"), 20))))
  out$resid_normalized_head <- I(unname(as.numeric(head(resid(fit, type = "normalized"), 20))))
  out$resid_pearson_head <- I(unname(as.numeric(head(resid(fit, type = "pearson"), 20))))
  rp <- resid(fit, type = "pearson")
  out$std_resid_quantiles <- I(unname(quantile(rp, type = 7)))
  out$std_resid_type <- "resid(fit, type = 'pearson') (summary's standardized residuals); quantile type 7"
  out$fitted_note <- paste0("fitted_head/resid_*_head are in the CSV row order",
                            if (is_lme) " (lme: innermost level, random effects included)" else " (gls)")
  out$printed_summary <- paste(capture.output(print(sm)), collapse = "\n")
  out
}

check_original <- function(cs, final_call) {
  req <- if (is.null(cs$requested)) cs$call else cs$requested
  if (!identical(final_call, cs$call)) req <- with_optim(req, cs$fun)
  r <- tryCatch(withCallingHandlers(eval(str2lang(req), orig),
                                    warning = function(w) invokeRestart("muffleWarning")),
                error = function(e) e)
  if (inherits(r, "error")) return(list(call = req, on = "nlme's groupedData", error = conditionMessage(r)))
  list(call = req, on = "nlme's own groupedData object (not the CSV)",
       loglik = as.numeric(logLik(r)),
       fixef = I(unname(as.numeric(if (inherits(r, "lme")) fixef(r) else coef(r)))))
}

fits <- list()
final_calls <- list()

run_case <- function(cs) {
  cat(sprintf("== %s\n", cs$case))
  ds <- datasets[[cs$data]]
  base <- list(
    case = cs$case,
    status = "ok",
    dataset = ds$file,
    dataset_source = ds$source,
    engine = paste("nlme", ver("nlme"), cs$fun),
    call = cs$call,
    formula = lme4_formula(cs),
    fixed = cs$fixed,
    random = cs$random,
    group = cs$group,
    correlation = cs$correlation,
    weights = cs$weights,
    family = "gaussian", link = "identity",
    method = NA_character_,
    data_prep = ds$data_prep,
    factor_levels = ds$factor_levels,
    ordered_in_source = ds$ordered_in_source,
    notes = if (is.null(cs$note)) NA_character_ else cs$note,
    r_version = R.version.string,
    package_versions = package_versions,
    blas_lapack = blas
  )
  ff <- fit_with_fallback(cs)
  r <- ff$r
  base$call <- ff$call
  if (!is.null(ff$requested_call)) {
    base$requested_call <- ff$requested_call
    base$requested_call_error <- ff$requested_call_error
  }
  if (!is.null(r$error)) {
    base$status <- if (r$timeout) "skipped" else "failed"
    base$error <- r$error
    base$converged <- FALSE
    base$notes <- paste(c(if (!is.na(base$notes)) base$notes,
                          if (r$timeout) sprintf("skipped: the fit took longer than %d s", TIME_LIMIT_S) else
                            "the fit failed with the default optimiser and with opt = \"optim\""),
                        collapse = " ")
    write_case(base, cs$case)
    return(invisible(NULL))
  }
  fit <- r$fit
  fits[[cs$case]] <<- fit
  final_calls[[cs$case]] <<- ff$call
  base$method <- fit$method
  if (!is.null(base$correlation)) {
    base$correlation$form_fitted <- deparse1(formula(fit$modelStruct$corStruct))
  }
  if (!is.null(base$weights)) {
    base$weights$form_fitted <- deparse1(formula(fit$modelStruct$varStruct))
  }
  base$optimizer <- ff$optimizer
  base$converged <- TRUE
  if (!is.null(ff$requested_call)) {
    base$notes <- paste(c(if (!is.na(base$notes)) base$notes,
                          sprintf("The requested call fails with nlme's default nlminb optimiser (see requested_call_error); the values come from the same model fitted with %s.",
                                  "control = *Control(opt = \"optim\") (BFGS)")), collapse = " ")
  }
  base$warnings <- I(r$warnings)
  base$messages <- I(r$messages)
  tm <- time_calls(ff$call)
  ex <- extract(fit, cs)
  chk <- check_original(cs, ff$call)
  if (is.null(chk$error)) {
    chk$loglik_diff <- chk$loglik - ex$loglik
    chk$max_abs_fixef_diff <- max(abs(chk$fixef - unlist(ex$fixef)))
  }
  out <- c(base, tm, ex, list(check_original_data = chk))
  write_case(out, cs$case)
  cat(sprintf("   loglik %.6f  optimizer %s  timing %.3f s\n", ex$loglik, ff$optimizer, tm$timing_s))
  invisible(fit)
}

# ---------------------------------------------------------------- anova case
run_anova <- function() {
  cat("== bodyweight_anova\n")
  ds <- datasets[["bodyweight"]]
  call0 <- "lme(weight ~ Time * Diet, BodyWeight, random = ~ Time | Rat)"
  car1 <- fits[["bodyweight_car1_power"]]
  out <- list(case = "bodyweight_anova", status = "ok", dataset = ds$file,
              dataset_source = ds$source, engine = paste("nlme", ver("nlme"), "lme + anova"),
              data_prep = ds$data_prep, factor_levels = ds$factor_levels,
              ordered_in_source = ds$ordered_in_source,
              r_version = R.version.string, package_versions = package_versions,
              blas_lapack = blas)
  if (is.null(car1)) {
    out$status <- "failed"
    out$error <- "the bodyweight_car1_power fit is not available (see its JSON)"
    write_case(out, "bodyweight_anova")
    return(invisible(NULL))
  }
  call1_text <- final_calls[["bodyweight_car1_power"]]
  r0 <- try_fit(call0)
  if (!is.null(r0$error)) {
    call0 <- with_optim(call0, "lme")
    out$requested_call0_error <- r0$error
    r0 <- try_fit(call0)
  }
  if (!is.null(r0$error)) {
    out$status <- "failed"; out$error <- r0$error
    write_case(out, "bodyweight_anova")
    return(invisible(NULL))
  }
  m0 <- r0$fit
  m1 <- car1
  a <- anova(m0, m1)
  ad <- as.data.frame(a)
  rows <- lapply(seq_len(nrow(ad)), function(i) list(
    model = c("m0", "m1")[i],
    df = as.integer(ad$df[i]), AIC = ad$AIC[i], BIC = ad$BIC[i], logLik = ad$logLik[i],
    test = if (is.na(ad$Test[i]) || ad$Test[i] == "") NA_character_ else as.character(ad$Test[i]),
    L.Ratio = ad$L.Ratio[i], `p-value` = ad$`p-value`[i]))
  anova_call <- "anova(m0, m1)"
  tm <- time_calls(c(paste("m0 <-", call0), paste("m1 <-", call1_text), "anova(m0, m1)"))
  tm$timing_note <- sprintf(paste("median elapsed seconds of %d runs of: fit m0, fit m1, anova(m0, m1),",
                                  "after one warm-up, in one R process, data already loaded"), N_TIMING)
  out <- c(out, list(
    call = sprintf("m0 <- %s; m1 <- %s; anova(m0, m1)", call0, call1_text),
    call_m0 = call0, call_m1 = call1_text, anova_call = anova_call,
    method = m0$method,
    notes = paste("REML likelihood-ratio test of m0 (random intercept and Time slope by Rat, independent",
                  "homoscedastic errors) against m1 = the bodyweight_car1_power fit (same fixed and random",
                  "effects plus varPower() and corCAR1(form = ~ Time)); valid under REML because the fixed",
                  "effects are the same. m1's own results are in bodyweight_car1_power.json."),
    warnings = I(r0$warnings),
    converged = TRUE),
    tm,
    list(
    anova_table = rows,
    anova_columns = I(c("model", "df", "AIC", "BIC", "logLik", "test", "L.Ratio", "p-value")),
    anova_printed = paste(capture.output(print(a)), collapse = "\n"),
    m0 = list(nobs = m0$dims$N, loglik = as.numeric(logLik(m0)), df_model = attr(logLik(m0), "df"),
              aic = AIC(m0), bic = BIC(m0),
              fixef = named_num(fixef(m0)), se = named_num(summary(m0)$tTable[, "Std.Error"]),
              varcorr = varcorr_rows(m0), sigma = m0$sigma,
              printed_summary = paste(capture.output(print(summary(m0))), collapse = "\n")),
    m1 = list(loglik = as.numeric(logLik(m1)), df_model = attr(logLik(m1), "df"),
              aic = AIC(m1), bic = BIC(m1))))
  write_case(out, "bodyweight_anova")
  cat(sprintf("   LR %.6f p %.3g  timing %.3f s\n", ad$L.Ratio[2], ad$`p-value`[2], tm$timing_s))
}

todo <- if (length(only)) intersect(names(cases), only) else names(cases)
if (length(only) && "bodyweight_anova" %in% only && !"bodyweight_car1_power" %in% todo) {
  todo <- c(todo, "bodyweight_car1_power")
}
for (cn in todo) {
  res <- tryCatch(run_case(cases[[cn]]), error = function(e) {
    cat(sprintf("   extraction error: %s\n", conditionMessage(e)))
    write_case(list(case = cn, status = "failed", call = cases[[cn]]$call,
                    engine = paste("nlme", ver("nlme"), cases[[cn]]$fun),
                    error = conditionMessage(e), converged = NA), cn)
  })
}
if (!length(only) || "bodyweight_anova" %in% only) {
  tryCatch(run_anova(), error = function(e) {
    cat(sprintf("   anova error: %s\n", conditionMessage(e)))
    write_case(list(case = "bodyweight_anova", status = "failed", error = conditionMessage(e)),
               "bodyweight_anova")
  })
}
