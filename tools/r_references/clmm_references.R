# Reference fits from R's ordinal::clmm (cumulative link mixed models).
#
# Run from the repository root (single-threaded):
#   OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 Rscript tools/r_references/clmm_references.R [CASE ...]
#
# Writes
#   tests/data/clmm/wine.csv, tests/data/clmm/soup.csv   the data behind the fits
#   tests/reference/clmm/<case>.json                     one file per case
#
# The JSON layout is that of the shared wine_clmm.json (see
# tests/reference/README.md), plus `threshold` (flexible / equidistant /
# symmetric), `theta_names` / `theta` (the implied cut points theta = tJac %*%
# thresholds) and `tJac`.  Every model is fitted to the CSV *as read back*, with
# the factor levels (and the ordered response) set explicitly from the level
# order recorded in `factor_levels`.
#
# Numbers: jsonlite 1.8.4 writes at most 15 significant digits even with
# digits = NA, which does not round-trip, so numbers are written here in the
# shortest of 15/16/17 significant digits that reads back to the same double
# (json_verbatim); otherwise toJSON(auto_unbox = TRUE, null = "null",
# na = "null", pretty = TRUE).

Sys.setenv(OMP_NUM_THREADS = "1", OPENBLAS_NUM_THREADS = "1")
options(warn = 1)

suppressPackageStartupMessages({
  library(ordinal)
  library(jsonlite)
})

args_all <- commandArgs(trailingOnly = FALSE)
script_path <- sub("^--file=", "", args_all[grep("^--file=", args_all)])
root <- if (length(script_path)) {
  normalizePath(file.path(dirname(script_path), "..", ".."))
} else {
  getwd()
}
data_dir <- file.path(root, "tests", "data", "clmm")
ref_dir <- file.path(root, "tests", "reference", "clmm")
dir.create(data_dir, recursive = TRUE, showWarnings = FALSE)
dir.create(ref_dir, recursive = TRUE, showWarnings = FALSE)

N_TIMING <- 5L
only <- commandArgs(trailingOnly = TRUE)  # optional: case names to run

ver <- function(p) utils::packageDescription(p)$Version
engine <- paste("ordinal", ver("ordinal"), "clmm")
package_versions <- list(ordinal = ver("ordinal"), ucminf = ver("ucminf"),
                         numDeriv = ver("numDeriv"), Matrix = ver("Matrix"),
                         jsonlite = ver("jsonlite"))

# ---------------------------------------------------------------- JSON output
source(file.path(root, "tools", "r_references", "json_out.R"))  # num_json, prep_json, named_num

# ---------------------------------------------------------------- data output
# write the CSV (15 significant digits, unquoted), read it back and set the
# factor levels from the recorded order; `ordered` names the ordered factors
write_data <- function(df, name, factors, ordered = character(0)) {
  path <- file.path(data_dir, paste0(name, ".csv"))
  stopifnot(!any(vapply(df, function(col) any(grepl("[,\"]", as.character(col))), TRUE)))
  write.csv(df, path, row.names = FALSE, quote = FALSE)
  d <- read.csv(path, stringsAsFactors = FALSE, colClasses = "character")
  for (col in names(d)) {
    if (col %in% names(factors)) {
      d[[col]] <- factor(d[[col]], levels = factors[[col]],
                         ordered = col %in% ordered)
      stopifnot(!anyNA(d[[col]]))
    } else {
      d[[col]] <- as.numeric(d[[col]])
    }
  }
  d
}

# wine: all columns of ordinal::wine
data(wine, package = "ordinal", envir = environment())
wine_src <- wine
wine_levels <- lapply(Filter(is.factor, wine_src), levels)
wine_df <- data.frame(
  response = wine_src$response,
  lapply(wine_src[names(wine_levels)], as.character),
  check.names = FALSE)[names(wine_src)]
wine <- write_data(wine_df, "wine", wine_levels, ordered = "rating")
stopifnot(all.equal(wine$response, wine_src$response),
          identical(as.integer(wine$rating), as.integer(wine_src$rating)))
wine_prep <- paste(
  "wine.csv holds all columns of ordinal::wine; rating is an ordered factor",
  "1 < 2 < 3 < 4 < 5; temp, contact, bottle, judge are factors")

# soup: only the columns used, plus RESP_PROD = RESP:PROD
data(soup, package = "ordinal", envir = environment())
soup_src <- soup
soup_src$RESP_PROD <- droplevels(soup_src$RESP:soup_src$PROD)  # levels '1:Ref', '1:Test', '2:Ref', ...
soup_cols <- c("RESP", "RESP_PROD", "PROD", "SURENESS", "DAY", "GENDER", "AGEGROUP")
soup_levels <- lapply(soup_src[soup_cols], levels)
soup_df <- data.frame(lapply(soup_src[soup_cols], as.character), check.names = FALSE)
soup <- write_data(soup_df, "soup", soup_levels, ordered = "SURENESS")
stopifnot(identical(as.integer(soup$SURENESS), as.integer(soup_src$SURENESS)),
          identical(as.integer(soup$RESP_PROD), as.integer(soup_src$RESP_PROD)))
soup_prep <- paste(
  "soup.csv holds the columns RESP, RESP_PROD, PROD, SURENESS, DAY, GENDER, AGEGROUP",
  "of ordinal::soup; SURENESS is an ordered factor 1 < 2 < 3 < 4 < 5 < 6;",
  "RESP_PROD is the interaction RESP:PROD with labels 'RESP:PROD' (e.g. '1:Ref'),",
  "levels in lexical order (RESP slowest), so (1 | RESP_PROD) is lme4's (1 | RESP:PROD)")

# ---------------------------------------------------------------- cases
wine_f <- rating ~ temp + contact + (1 | judge)
cases <- list(
  list(case = "wine_clmm_probit", data = "wine",
       call = quote(clmm(rating ~ temp + contact + (1 | judge), data = wine, link = "probit")),
       desc = "Cumulative probit mixed model, flexible thresholds: P(rating <= j) = Phi(theta_j - (beta'x + b_judge))."),
  list(case = "wine_clmm_equidistant", data = "wine",
       call = quote(clmm(rating ~ temp + contact + (1 | judge), data = wine, threshold = "equidistant")),
       desc = paste("Cumulative logit mixed model, equidistant thresholds: theta_j = threshold.1 + (j - 1) * spacing,",
                    "j = 1..4 (theta = tJac %*% thresholds). Threshold parameters 'threshold.1', 'spacing'.")),
  list(case = "wine_clmm_symmetric_cloglog", data = "wine",
       call = quote(clmm(rating ~ temp + contact + (1 | judge), data = wine, link = "cloglog", threshold = "symmetric")),
       desc = paste("Cumulative cloglog mixed model, symmetric thresholds (4 cut points, an even number):",
                    "theta_1 = central.1 - spacing.1, theta_2 = central.1, theta_3 = central.2,",
                    "theta_4 = central.2 + spacing.1 (theta = tJac %*% thresholds).",
                    "Threshold parameters 'central.1', 'central.2', 'spacing.1'.")),
  list(case = "wine_clmm_probit_agq10", data = "wine",
       call = quote(clmm(rating ~ temp + contact + (1 | judge), data = wine, link = "probit", nAGQ = 10)),
       desc = "As wine_clmm_probit, with 10-point adaptive Gauss-Hermite quadrature."),
  list(case = "wine_clmm_two_terms", data = "wine",
       call = quote(clmm(rating ~ temp + contact + (1 | judge) + (1 | bottle), data = wine)),
       desc = "Cumulative logit mixed model, flexible thresholds, crossed random intercepts for judge (9) and bottle (8)."),
  list(case = "soup_clmm", data = "soup",
       call = quote(clmm(SURENESS ~ PROD + (1 | RESP), data = soup)),
       desc = "Cumulative logit mixed model, flexible thresholds '1|2' .. '5|6', random intercept per respondent."),
  list(case = "soup_clmm_agq5", data = "soup",
       call = quote(clmm(SURENESS ~ PROD + (1 | RESP), data = soup, nAGQ = 5)),
       desc = "As soup_clmm, with 5-point adaptive Gauss-Hermite quadrature."),
  list(case = "soup_clmm_nested", data = "soup",
       call = quote(clmm(SURENESS ~ PROD + (1 | RESP) + (1 | RESP_PROD), data = soup)),
       desc = paste("Cumulative logit mixed model, random intercepts for RESP and for RESP_PROD = RESP:PROD",
                    "(i.e. (1 | RESP/PROD) minus the PROD main effect term, which is fixed).")),
  list(case = "soup_clmm_slope", data = "soup",
       call = quote(clmm(SURENESS ~ PROD + (1 + PROD | RESP), data = soup)),
       desc = "Cumulative logit mixed model, correlated random intercept and PRODTest slope per respondent."),
  list(case = "soup_clmm_loglog_covariates", data = "soup",
       call = quote(clmm(SURENESS ~ PROD + DAY + GENDER + AGEGROUP + (1 | RESP), data = soup, link = "loglog")),
       desc = "Cumulative loglog mixed model, flexible thresholds, fixed covariates PROD, DAY, GENDER, AGEGROUP, random intercept per respondent.")
)

call_text <- function(cl) paste(deparse(cl, width.cutoff = 500L), collapse = " ")

run_fit <- function(cl, env) {
  warns <- character(0)
  msgs <- character(0)
  fit <- withCallingHandlers(
    eval(cl, env),
    warning = function(w) {
      warns <<- c(warns, conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      msgs <<- c(msgs, trimws(conditionMessage(m)))
      invokeRestart("muffleMessage")
    })
  times <- numeric(N_TIMING)
  for (k in seq_len(N_TIMING)) {
    times[k] <- system.time(suppressWarnings(suppressMessages(eval(cl, env))))[["elapsed"]]
  }
  list(fit = fit, warnings = unique(warns), messages = unique(msgs),
       timing = median(times), times = times)
}

varcorr_rows <- function(fit) {
  vc <- VarCorr(fit)
  rows <- list()
  for (g in names(vc)) {
    m <- vc[[g]]
    tn <- rownames(m)
    s <- attr(m, "stddev")
    for (i in seq_along(tn)) {
      rows[[length(rows) + 1]] <- list(group = g, var1 = tn[i], var2 = NA_character_,
                                       vcov = m[i, i], sdcor = unname(s[i]))
    }
    if (length(tn) > 1) {
      cm <- attr(m, "correlation")
      for (i in 1:(length(tn) - 1)) for (j in (i + 1):length(tn)) {
        rows[[length(rows) + 1]] <- list(group = g, var1 = tn[i], var2 = tn[j],
                                         vcov = m[i, j], sdcor = cm[i, j])
      }
    }
  }
  rows
}

ranef_list <- function(re) {
  out <- list()
  for (g in names(re)) {
    d <- re[[g]]
    out[[g]] <- setNames(lapply(seq_len(nrow(d)), function(i) {
      setNames(lapply(names(d), function(t) d[i, t]), names(d))
    }), rownames(d))
  }
  out
}

# one entry per ST parameter (ST1..STk, ordinal's numbering): group, var1, var2
# (var2 set for the off-diagonal Cholesky elements), scale, value, in_vcov
st_params <- function(fit, vcov_names) {
  single_scalar <- length(fit$ST) == 1 && ncol(fit$ST[[1]]) == 1
  out <- list()
  for (g in names(fit$ST)) {
    L <- fit$ST[[g]]
    tn <- colnames(L)
    if (is.null(tn)) tn <- "(Intercept)"
    if (ncol(L) == 1) {
      items <- list(list(group = g, var1 = tn[1], var2 = NA_character_,
                         scale = if (single_scalar) "log_sd" else "sd",
                         value = if (single_scalar) log(L[1, 1]) else L[1, 1]))
    } else {
      items <- lapply(seq_len(ncol(L)), function(i)
        list(group = g, var1 = tn[i], var2 = NA_character_, scale = "cholesky", value = L[i, i]))
      for (j in 1:(ncol(L) - 1)) for (i in (j + 1):ncol(L)) {
        items[[length(items) + 1]] <- list(group = g, var1 = tn[i], var2 = tn[j],
                                           scale = "cholesky", value = L[i, j])
      }
    }
    out <- c(out, items)
  }
  stopifnot(length(out) == fit$dims$nSTpar)
  names(out) <- paste0("ST", seq_along(out))
  for (k in names(out)) out[[k]]$in_vcov <- k %in% vcov_names
  out
}

# refit with a tight inner tolerance (the Newton iterations for the conditional
# modes; ordinal's default gradTol = 1e-4 leaves the Laplace/AGQ objective
# noisy, which is what stops nlminb); differences from the reported fit
TIGHT_CONTROL <- "clmm.control(gradTol = 1e-10, maxIter = 200)"
tight_refit <- function(fit, cl, env) {
  cl2 <- cl
  cl2$control <- str2lang(TIGHT_CONTROL)
  nw <- 0L
  kinds <- character(0)
  f2 <- withCallingHandlers(eval(cl2, env), warning = function(w) {
    nw <<- nw + 1L
    kinds <<- unique(c(kinds, sub("\\s+at iteration [0-9]+$", "", conditionMessage(w))))
    invokeRestart("muffleWarning")
  })
  vc1 <- vapply(varcorr_rows(fit), function(x) x$vcov, 0)
  vc2 <- vapply(varcorr_rows(f2), function(x) x$vcov, 0)
  list(control = TIGHT_CONTROL,
       loglik = as.numeric(f2$logLik),
       loglik_diff = as.numeric(f2$logLik) - as.numeric(fit$logLik),
       max_grad = max(abs(f2$gradient)),
       converged = isTRUE(f2$optRes$convergence == 0),
       optimizer_message = f2$optRes$message,
       n_warnings = nw,
       warning_kinds = I(kinds),
       note = paste("gradTol = 1e-10 is below what the inner Newton updates can reach, so",
                    "the refit warns ('step factor reduced below minimum' / 'iteration limit",
                    "reached when updating the random effects'); its optimum is still the",
                    "more accurate one (higher logLik)"),
       max_abs_coef_diff = max(abs(coef(f2) - coef(fit))),
       max_abs_varcorr_diff = max(abs(vc2 - vc1)),
       coef = named_num(coef(f2)),
       varcorr_vcov = I(vc2))
}

model_factors <- function(fit, data) {
  vars <- all.vars(fit$formula)
  vars <- vars[vapply(vars, function(v) is.factor(data[[v]]), TRUE)]
  lapply(setNames(vars, vars), function(v) I(levels(data[[v]])))
}

fit_case <- function(cs) {
  env <- new.env()
  data <- get(cs$data)
  assign(cs$data, data, envir = env)
  cl <- cs$call
  r <- run_fit(cl, env)
  fit <- r$fit
  sm <- summary(fit)
  ct <- sm$coefficients
  V <- vcov(fit)
  coef_names <- rownames(ct)
  est <- ct[, "Estimate"]
  se <- ct[, "Std. Error"]
  q <- qnorm(0.975)
  wald <- setNames(lapply(coef_names, function(n) I(c(est[[n]] - q * se[[n]], est[[n]] + q * se[[n]]))),
                   coef_names)
  nAGQ <- as.integer(fit$nAGQ)
  st <- st_params(fit, rownames(V))
  st_note <- paste(
    "rows/cols: thresholds, betas, then ordinal's internal random-effect parameters ST1..STk",
    "(see st_params): terms ordered as in varcorr (ordinal sorts the grouping factors by",
    "decreasing number of levels); with a single scalar random term ST1 = log(SD); otherwise",
    "a scalar term's ST is its SD and a vector-valued term's ST are the elements of the",
    "lower-triangular Cholesky factor L (covariance = L L'), diagonal first, then the lower",
    "triangle by columns, natural scale. ST parameters at the boundary (< 1e-3) are left out",
    "of the Hessian, so of vcov and max_grad.")
  re <- ranef(fit)
  cv <- condVar(fit)
  cv_sd <- lapply(cv, function(d) { d[] <- lapply(d, sqrt); d })
  ll <- as.numeric(fit$logLik)
  notes <- cs$desc
  if (cs$case == "soup_clmm_nested") {
    # check: the explicit column gives the same fit as (1 | RESP:PROD) on the original data
    chk <- clmm(SURENESS ~ PROD + (1 | RESP) + (1 | RESP:PROD), data = soup_src)
    notes <- paste(notes, sprintf(paste(
      "Check: clmm(SURENESS ~ PROD + (1 | RESP) + (1 | RESP:PROD), data = ordinal::soup)",
      "gives logLik %.10f (this fit %.10f)."), as.numeric(chk$logLik), ll))
  }
  if (fit$optRes$convergence != 0) {
    notes <- paste(notes, "Optimizer did not report convergence:", fit$optRes$message)
  }
  if (length(r$warnings)) {
    notes <- paste(notes, "Warnings were raised; see `warnings`.")
    if (all(grepl("^Non finite negative log-likelihood", r$warnings)) && fit$optRes$convergence == 0) {
      notes <- paste(notes, "The warning reports a non-finite objective at a trial point during",
                     "the optimisation; the optimizer recovered and reported convergence.")
    }
  }
  dropped <- vapply(st, function(x) !x$in_vcov, TRUE)
  if (any(dropped)) {
    notes <- paste(notes, sprintf(paste(
      "Boundary fit: %s (SD %s) is at (nearly) zero; ordinal leaves its ST parameter(s) out",
      "of the Hessian, so vcov has no %s row."),
      paste(vapply(st[dropped], function(x) x$group, ""), collapse = ", "),
      paste(signif(vapply(st[dropped], function(x) x$value, 0), 3), collapse = ", "),
      paste(names(st)[dropped], collapse = ", ")))
  }
  tight <- tight_refit(fit, cl, env)
  notes <- paste(notes, sprintf(paste(
    "Optimum accuracy: ordinal's defaults (inner gradTol = 1e-4, nlminb) stop at max|gradient| = %.2g;",
    "a refit with a tight inner tolerance (extra$tight_refit) changes logLik by %.2g, the",
    "coefficients by at most %.2g and the variance components (vcov column of varcorr) by at",
    "most %.2g."),
    max(abs(fit$gradient)), tight$loglik_diff, tight$max_abs_coef_diff, tight$max_abs_varcorr_diff))
  res <- list(
    case = cs$case,
    dataset = paste0(cs$data, ".csv"),
    dataset_source = paste0("ordinal::", cs$data),
    engine = engine,
    call = call_text(cl),
    formula = paste(deparse(fit$formula, width.cutoff = 500L), collapse = " "),
    family = "cumulative",
    link = fit$link,
    threshold = fit$threshold,
    method = if (nAGQ > 1) "AGQ" else "Laplace",
    nAGQ = nAGQ,
    data_prep = if (cs$data == "wine") wine_prep else soup_prep,
    factor_levels = model_factors(fit, data),
    notes = notes,
    r_version = R.version.string,
    package_versions = package_versions,
    warnings = I(r$warnings),
    messages = I(r$messages),
    timing_s = r$timing,
    timing_loadavg = trimws(readLines("/proc/loadavg")),
    timing_runs_s = I(r$times),
    timing_note = sprintf(paste("median elapsed seconds of %d fits of `call` after one warm-up fit,",
                                "in one R process, data already loaded"), N_TIMING),
    nobs = as.integer(fit$dims$nobs),
    ngroups = as.list(setNames(as.integer(fit$dims$nlev.gf), names(fit$dims$nlev.gf))),
    fixef_names = I(names(fit$beta)),
    fixef = named_num(fit$beta),
    threshold_names = I(names(fit$alpha)),
    thresholds = named_num(fit$alpha),
    theta_names = I(colnames(fit$Theta)),
    theta = named_num(setNames(as.numeric(fit$Theta), colnames(fit$Theta))),
    tJac = unname(fit$tJac) + 0,
    coef_names = I(coef_names),
    se = named_num(se),
    z = named_num(ct[, "z value"]),
    p = named_num(ct[, "Pr(>|z|)"]),
    vcov_names = I(rownames(V)),
    vcov = unname(V),
    vcov_note = st_note,
    st_params = st,
    varcorr = varcorr_rows(fit),
    loglik = ll,
    df_model = as.integer(fit$edf),
    aic = AIC(fit),
    bic = BIC(fit),
    deviance = -2 * ll,
    ranef = ranef_list(re),
    ranef_condsd = ranef_list(cv_sd),
    ranef_levels_total = as.list(setNames(as.integer(fit$dims$nlev.gf), names(fit$dims$nlev.gf))),
    fitted_head = I(unname(head(fitted(fit), 20))),
    fitted_note = paste("clmm fitted values: probability of the observed response category",
                        "at the conditional modes of the random effects"),
    wald_ci = wald,
    profile_ci_status = sprintf("not available: ordinal %s has no profile method for clmm", ver("ordinal")),
    converged = isTRUE(fit$optRes$convergence == 0),
    max_grad = max(abs(fit$gradient)),
    cond_H = sm$condHess,
    printed_summary = paste(capture.output(print(sm)), collapse = "\n"),
    extra = list(tight_refit = tight)
  )
  txt <- toJSON(prep_json(res), auto_unbox = TRUE, json_verbatim = TRUE,
                pretty = TRUE, null = "null", na = "null")
  path <- file.path(ref_dir, paste0(cs$case, ".json"))
  writeLines(txt, path)
  # round-trip check of the numbers
  back <- fromJSON(path, simplifyVector = TRUE)
  stopifnot(identical(back$loglik, ll),
            identical(unname(unlist(back$fixef)), unname(as.numeric(fit$beta))),
            identical(unname(as.matrix(back$vcov)), unname(V)))
  cat(sprintf("wrote %s  loglik %.10f  converged %s  warnings %d  timing %.3f s\n",
              path, ll, res$converged, length(r$warnings), r$timing))
  invisible(res)
}

for (cs in cases) {
  if (length(only) && !(cs$case %in% only)) next
  fit_case(cs)
}
