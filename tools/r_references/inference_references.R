# Reference values from R for inference on mixed models: type-III F tests with
# Satterthwaite / Kenward-Roger denominator df (lmerTest, pbkrtest), ranova,
# likelihood-ratio tests, profile and Wald intervals, car::Anova Wald chi-square
# tests, Nakagawa R2 / ICC (performance, insight::get_variance) and estimated
# marginal means with pairwise contrasts (emmeans).
#
# Run from the repository root (single-threaded):
#   OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 Rscript tools/r_references/inference_references.R [CASE ...]
#
# Needs lme4, lmerTest, pbkrtest, car, emmeans, performance (with insight),
# jsonlite; on Debian: apt-get install -y r-cran-emmeans r-cran-performance.
#
# Reads the CSVs shipped in src/multilevel/datasets/ (hsb.csv, sleepstudy.csv,
# cbpp.csv, grouseticks.csv, penicillin.csv); factor levels are set explicitly
# and recorded in `factor_levels` (the first level is the reference level).
#
# Writes
#   tests/reference/inference/<case>.json   one file per case:
#   hsb_reml, hsb_intercept_reml, sleep_reml, cbpp_laplace, grouse_poisson,
#   penicillin_reml
#
# JSON layout of one case
#   case, dataset (CSV file name), dataset_path, call (the R code that fits the
#   model(s), evaluated as written in the global environment, data frame named
#   as in the call), formula, family, link, method, factor_levels, data_prep,
#   notes, r_version, package_versions, options (emmeans options set),
#   nobs, ngroups, loglik, df_model, fixef ({name: value}), fit_warnings,
#   fit_messages, then one block per result, e.g. "anova_type3_satterthwaite".
#
#   Every result block is an object
#     {"call": "<R code evaluated for this block>",
#      "table" or "values": ...,
#      "warnings": [...], "messages": [...]   (R conditions raised by `call`),
#      "printed": "<print() of the result>",  (for reading; not to parse)
#      ... block-specific extras (see below)}
#
#   A table (data frame or matrix) is always written as
#     {"columns": [R column names, e.g. "Sum Sq", "Pr(>F)"],
#      "rows":    [R row names; "1", "2", ... where R has none],
#      "data":    [[row 1 cells in column order], [row 2], ...]}
#   Cells are numbers, strings (factor/character columns such as "sector" or
#   "contrast"), null (NA) or the strings "Inf" / "-Inf" (infinite, e.g.
#   emmeans's df = Inf for asymptotic GLMM inference).  Table extras:
#   "heading" (R's table heading lines), "mesg" (emmeans's notes printed below
#   a summary), "adjust" (the p-value adjustment emmeans actually applied; with
#   a single contrast emmeans reports "none" even when tukey was requested, the
#   p-value being the same).
#
#   "values" is {name: number} (named R vector or list; a component with several
#   named entries, e.g. get_variance's var.intercept, is a nested {name: number}).
#
# Numbers: jsonlite 1.8.4 writes at most 15 significant digits even with
# digits = NA, which does not round-trip, so numbers are written here in the
# shortest of 15/16/17 significant digits that reads back to the same double
# (json_verbatim); otherwise toJSON(auto_unbox = TRUE, null = "null",
# na = "null", pretty = TRUE).
#
# emmeans's default limits (pbkrtest.limit = lmerTest.limit = 3000 observations)
# would make it fall back to asymptotic df for hsb (7185 rows); they are raised
# (recorded in `options`) so the requested df methods are really used.

Sys.setenv(OMP_NUM_THREADS = "1", OPENBLAS_NUM_THREADS = "1")
options(warn = 1)

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
  library(car)
  library(emmeans)
  library(performance)
  library(insight)
  library(jsonlite)
})

args_all <- commandArgs(trailingOnly = FALSE)
script_path <- sub("^--file=", "", args_all[grep("^--file=", args_all)])
root <- if (length(script_path)) {
  normalizePath(file.path(dirname(script_path), "..", ".."))
} else {
  getwd()
}
src_dir <- file.path(root, "src", "multilevel", "datasets")
ref_dir <- file.path(root, "tests", "reference", "inference")
dir.create(ref_dir, recursive = TRUE, showWarnings = FALSE)

only <- commandArgs(trailingOnly = TRUE)  # optional: case names to run

ver <- function(p) utils::packageDescription(p)$Version
package_versions <- list(
  lme4 = ver("lme4"), lmerTest = ver("lmerTest"), pbkrtest = ver("pbkrtest"),
  car = ver("car"), emmeans = ver("emmeans"), estimability = ver("estimability"),
  performance = ver("performance"), insight = ver("insight"),
  Matrix = ver("Matrix"), jsonlite = ver("jsonlite"))

EMM_OPTIONS <- "emm_options(pbkrtest.limit = 1e5, lmerTest.limit = 1e5)"
eval(str2lang(EMM_OPTIONS))

# ---------------------------------------------------------------- JSON output
source(file.path(root, "tools", "r_references", "json_out.R"))  # num_json, prep_json, named_num

# one table cell: number (shortest round trip), null for NA, "Inf"/"-Inf",
# or a string for factor / character columns
cell <- function(v) {
  if (is.factor(v)) v <- as.character(v)
  if (is.character(v)) return(if (is.na(v)) NA_character_ else v)
  if (is.logical(v) && is.na(v)) return(structure("null", class = "json"))
  v <- as.numeric(v)
  if (!is.na(v) && is.infinite(v)) {
    return(structure(if (v > 0) "\"Inf\"" else "\"-Inf\"", class = "json"))
  }
  num_json(v)
}
# data frame or matrix -> {columns, rows, data}
tbl <- function(x) {
  if (is.data.frame(x)) class(x) <- "data.frame"
  df <- as.data.frame(x, check.names = FALSE, stringsAsFactors = FALSE)
  rn <- rownames(x)
  if (is.null(rn)) rn <- as.character(seq_len(nrow(df)))
  cols <- names(df)
  data <- lapply(seq_len(nrow(df)), function(i) {
    lapply(cols, function(cn) cell(df[[cn]][i]))
  })
  list(columns = I(cols), rows = I(as.character(rn)), data = data)
}
# named numbers, a nested list for components with several named entries
vals <- function(x) {
  out <- lapply(x, function(v) {
    v <- unlist(v)
    if (length(v) == 1 && is.null(names(v))) return(as.numeric(v))
    if (length(v) == 1) return(named_num(v))
    named_num(v)
  })
  names(out) <- names(x)
  out
}

# ---------------------------------------------------------------- evaluation
# evaluate R code (text) in the global environment, collecting warnings and
# messages
run <- function(code) {
  warns <- character(0)
  msgs <- character(0)
  value <- withCallingHandlers(
    {
      v <- NULL
      for (e in parse(text = code, keep.source = FALSE)) v <- eval(e, envir = globalenv())
      v
    },
    warning = function(w) {
      warns <<- c(warns, conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      msgs <<- c(msgs, trimws(conditionMessage(m)))
      invokeRestart("muffleMessage")
    })
  list(value = value, warnings = unique(warns), messages = unique(msgs))
}
last_value <- NULL
printed <- function(x) paste(capture.output(print(x)), collapse = "\n")

# a table block: `code` evaluates to a data frame / anova / summary_emm / matrix
table_block <- function(code, extra = NULL) {
  r <- run(code)
  x <- r$value
  last_value <<- x
  out <- list(call = code, table = tbl(x))
  h <- attr(x, "heading")
  if (!is.null(h)) out$heading <- I(trimws(h))
  if (inherits(x, "summary_emm")) {
    out$mesg <- I(attr(x, "mesg"))
    out$adjust <- attr(x, "adjust")
    out$estimate_type <- attr(x, "type")
  }
  out$warnings <- I(r$warnings)
  out$messages <- I(r$messages)
  out$printed <- printed(x)
  c(out, extra)
}
# a values block: `code` evaluates to a named vector / list
values_block <- function(code, extra = NULL, transform = identity) {
  r <- run(code)
  x <- r$value
  out <- list(call = code, values = vals(transform(unclass(x))),
              warnings = I(r$warnings), messages = I(r$messages),
              printed = printed(x))
  c(out, extra)
}
# lmerTest anova: add the contrast matrices L of each term's hypothesis
lmertest_anova_block <- function(code) {
  b <- table_block(code)
  hyp <- attr(last_value, "hypotheses")
  if (!is.null(hyp)) {
    b$hypotheses <- lapply(hyp, tbl)
    b$hypotheses_note <- paste(
      "per term the contrast matrix L (rows: R's names, columns: the fixed",
      "effects) of the type-III hypothesis L beta = 0 that lmerTest tests")
  }
  b
}
# emmeans blocks: the summary plus the reference grid and the linear functions
emm_block <- function(code, summary_code) {
  b <- table_block(summary_code)
  e <- run(code)$value
  b$object_call <- code
  b$linfct <- tbl(e@linfct)
  b$linfct_note <- "rows of emmGrid@linfct: estimate = linfct %*% fixef (link scale)"
  b$grid <- tbl(e@grid)
  b
}

model_factors <- function(fit, data) {
  vars <- all.vars(formula(fit))
  vars <- vars[vapply(vars, function(v) is.factor(data[[v]]), TRUE)]
  lapply(setNames(vars, vars), function(v) I(levels(data[[v]])))
}

# ---------------------------------------------------------------- data
read_data <- function(name, factors) {
  d <- read.csv(file.path(src_dir, name), stringsAsFactors = FALSE,
                colClasses = "character")
  for (col in names(d)) {
    if (col %in% names(factors)) {
      lev <- factors[[col]]
      if (identical(lev, "numeric-order")) {
        u <- unique(d[[col]])
        lev <- u[order(as.numeric(u))]
      } else if (identical(lev, "lexical-order")) {
        lev <- sort(unique(d[[col]]), method = "radix")
      }
      d[[col]] <- factor(d[[col]], levels = lev)
      stopifnot(!anyNA(d[[col]]))
    } else {
      d[[col]] <- as.numeric(d[[col]])
    }
  }
  d
}

hsb <- read_data("hsb.csv", list(school = "numeric-order",
                                 sector = c("Public", "Catholic")))
sleepstudy <- read_data("sleepstudy.csv", list(Subject = "numeric-order"))
cbpp <- read_data("cbpp.csv", list(herd = "numeric-order",
                                   period = c("1", "2", "3", "4")))
grouseticks <- read_data("grouseticks.csv",
                         list(INDEX = "numeric-order", BROOD = "numeric-order",
                              YEAR = c("95", "96", "97"),
                              LOCATION = "numeric-order"))
penicillin <- read_data("penicillin.csv", list(plate = "lexical-order",
                                               sample = "lexical-order"))

# ---------------------------------------------------------------- common parts
header <- function(case, dataset, fit_code, fit, data, family, link, method,
                   data_prep, notes) {
  r <- run(fit_code)
  fit <- get(fit, envir = globalenv())
  list(
    case = case,
    dataset = dataset,
    dataset_path = file.path("src/multilevel/datasets", dataset),
    call = fit_code,
    formula = paste(deparse(formula(fit), width.cutoff = 500L), collapse = " "),
    family = family,
    link = link,
    method = method,
    factor_levels = model_factors(fit, data),
    data_prep = data_prep,
    notes = notes,
    r_version = R.version.string,
    package_versions = package_versions,
    options = EMM_OPTIONS,
    nobs = nobs(fit),
    ngroups = as.list(vapply(ngrps(fit), as.integer, 1L)),
    loglik = as.numeric(logLik(fit)),
    df_model = as.integer(attr(logLik(fit), "df")),
    fixef = named_num(fixef(fit)),
    fit_warnings = I(r$warnings),
    fit_messages = I(r$messages)
  )
}

# get_variance pieces, with an independent recomputation of the parts that
# depend on definitions (random-slope variance, distribution variance)
variance_block <- function(fit_name, data_name, dist_note) {
  b <- values_block(sprintf("insight::get_variance(%s)", fit_name))
  fit <- get(fit_name, envir = globalenv())
  X <- getME(fit, "X")
  vf <- var(as.vector(X %*% fixef(fit)))
  vc <- VarCorr(fit)
  vr <- sum(vapply(names(vc), function(g) {
    S <- vc[[g]]
    Z <- X[, rownames(S), drop = FALSE]
    mean(rowSums((Z %*% S) * Z))
  }, 0))
  b$definitions <- list(
    var.fixed = "var(X %*% beta) over the observations (denominator n - 1)",
    var.random = paste(
      "sum over random terms of mean_i z_i' Sigma z_i, z_i = the fixed-effects design",
      "row restricted to the term's columns (Johnson 2014; for a random intercept",
      "this is just its variance, for (cses | school) it is",
      "mean_i [s00 + 2 s01 cses_i + s11 cses_i^2])"),
    var.residual = "var.distribution + var.dispersion",
    var.distribution = dist_note,
    var.dispersion = "0 here (no observation-level random effect)",
    var.intercept = "variance of each random intercept",
    var.slope = "variance of each random slope",
    r2_marginal = "var.fixed / (var.fixed + var.random + var.residual)",
    r2_conditional = "(var.fixed + var.random) / (var.fixed + var.random + var.residual)",
    icc_adjusted = "var.random / (var.random + var.residual)",
    icc_unadjusted = "var.random / (var.fixed + var.random + var.residual)")
  b$check <- list(
    call = paste("var.fixed and var.random recomputed in this script from getME(fit, 'X'),",
                 "fixef(fit) and VarCorr(fit) with the definitions above"),
    var.fixed = vf, var.random = vr)
  gv <- run(sprintf("insight::get_variance(%s, verbose = FALSE)", fit_name))$value
  stopifnot(isTRUE(all.equal(gv$var.fixed, vf, tolerance = 1e-12)),
            isTRUE(all.equal(gv$var.random, vr, tolerance = 1e-12)))
  b
}

r2_block <- function(fit_name) {
  values_block(sprintf("performance::r2_nakagawa(%s)", fit_name),
               transform = function(x) lapply(x, unname))
}
icc_block <- function(fit_name) {
  b <- table_block(sprintf("performance::icc(%s)", fit_name))
  b
}

write_case <- function(res) {
  txt <- toJSON(prep_json(res), auto_unbox = TRUE, json_verbatim = TRUE,
                pretty = TRUE, null = "null", na = "null")
  path <- file.path(ref_dir, paste0(res$case, ".json"))
  writeLines(txt, path)
  back <- fromJSON(path, simplifyVector = FALSE)
  stopifnot(identical(back$loglik, res$loglik),
            identical(unname(unlist(back$fixef)), unname(unlist(res$fixef))))
  cat(sprintf("wrote %s  loglik %.10f\n", path, res$loglik))
}

lmm_dist <- "sigma^2 (residual variance of the LMM)"

# ---------------------------------------------------------------- cases
# emmeans by sector with both DF methods, and their Tukey pairs (the HSB cases)
sector_emmeans <- function(res) {
  for (df in c("satterthwaite", "kenward-roger")) {
    key <- gsub("-", "_", df)
    em <- sprintf('emmeans(fit, "sector", lmer.df = "%s")', df)
    res[[paste0("emmeans_sector_", key)]] <- emm_block(em, sprintf("summary(%s)", em))
    res[[paste0("pairs_sector_", key, "_tukey")]] <- table_block(
      sprintf('summary(pairs(%s, adjust = "tukey"))', em))
  }
  res
}

case_hsb_reml <- function() {
  res <- header(
    "hsb_reml", "hsb.csv",
    "fit <- lmerTest::lmer(mathach ~ meanses*cses + sector*cses + (cses | school), data = hsb, REML = TRUE)",
    "fit", hsb, "gaussian", "identity", "REML",
    "none (cses, meanses in the CSV); school a factor, sector levels Public, Catholic",
    paste("emmeans: sector is involved in an interaction (cses:sector), so emmeans",
          "notes 'Results may be misleading due to involvement in interactions';",
          "the means are at the covariate means in ref_grid (meanses, cses averaged",
          "over the 7185 rows)."))
  res$anova_type3_satterthwaite <- lmertest_anova_block('anova(fit, type = 3, ddf = "Satterthwaite")')
  res$anova_type3_kenward_roger <- lmertest_anova_block('anova(fit, type = 3, ddf = "Kenward-Roger")')
  res$ranova <- table_block("lmerTest::ranova(fit)")
  res$r2_nakagawa <- r2_block("fit")
  res$icc <- icc_block("fit")
  res$get_variance <- variance_block("fit", "hsb", lmm_dist)
  res$ref_grid <- table_block("ref_grid(fit)@grid",
                              list(levels = list(call = "ref_grid(fit)@levels",
                                                 values = lapply(ref_grid(fit)@levels, function(v) if (is.numeric(v)) v else I(v))),
                                   note = paste("covariates at their means over the data rows;",
                                                ".wgt. = number of rows per sector")))
  res <- sector_emmeans(res)
  write_case(res)
}

case_hsb_intercept_reml <- function() {
  res <- header(
    "hsb_intercept_reml", "hsb.csv",
    "fit <- lmerTest::lmer(mathach ~ ses + sector + (1 | school), data = hsb, REML = TRUE)",
    "fit", hsb, "gaussian", "identity", "REML",
    "none; school a factor, sector levels Public, Catholic",
    "emmeans: sector means at ses = mean(ses) over the 7185 rows (see ref_grid).")
  res$anova_type3_satterthwaite <- lmertest_anova_block('anova(fit, type = 3, ddf = "Satterthwaite")')
  res$anova_type3_kenward_roger <- lmertest_anova_block('anova(fit, type = 3, ddf = "Kenward-Roger")')
  res$r2_nakagawa <- r2_block("fit")
  res$icc <- icc_block("fit")
  res$get_variance <- variance_block("fit", "hsb", lmm_dist)
  res$ref_grid <- table_block("ref_grid(fit)@grid")
  res <- sector_emmeans(res)
  write_case(res)
}

case_sleep_reml <- function() {
  res <- header(
    "sleep_reml", "sleepstudy.csv",
    "fit <- lmerTest::lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy, REML = TRUE)",
    "fit", sleepstudy, "gaussian", "identity", "REML",
    "none; Subject a factor (levels in numeric order)", "")
  res$anova_type3_satterthwaite <- lmertest_anova_block('anova(fit, type = 3, ddf = "Satterthwaite")')
  res$anova_type3_kenward_roger <- lmertest_anova_block('anova(fit, type = 3, ddf = "Kenward-Roger")')
  res$r2_nakagawa <- r2_block("fit")
  res$icc <- icc_block("fit")
  res$get_variance <- variance_block("fit", "sleepstudy", lmm_dist)
  write_case(res)
}

case_cbpp_laplace <- function() {
  res <- header(
    "cbpp_laplace", "cbpp.csv",
    paste("g1 <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp,",
          "family = binomial, control = glmerControl(tolPwrss = 1e-12));",
          "g0 <- glmer(cbind(incidence, size - incidence) ~ 1 + (1 | herd), data = cbpp,",
          "family = binomial, control = glmerControl(tolPwrss = 1e-12))"),
    "g1", cbpp, "binomial", "logit", "Laplace",
    "none (binomial response: incidence successes out of size trials); herd a factor",
    paste("loglik, fixef, nobs, df_model are those of g1; g0 is in loglik_null.",
          "performance 0.10.2 / insight 0.19.0 offer no choice of method for the",
          "distribution-specific variance: for binomial logit it is the theoretical",
          "pi^2/3 (probit 1, cloglog pi^2/6); the 'delta' / 'lognormal' alternatives",
          "of later versions do not exist in these versions (r2_nakagawa(model,",
          "by_group, tolerance, ci, iterations) has no such argument)."))
  dflt <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp,
                family = binomial)
  res$notes <- paste(res$notes, sprintf(paste(
    "tolPwrss = 1e-12 tightens the inner PIRLS iterations: g1 with lme4's default control",
    "(as in tests/reference/cbpp_laplace.json) has logLik lower by %.2g and fixef differing",
    "by up to %.2g; these tight values are the more accurate optimum."),
    as.numeric(logLik(g1)) - as.numeric(logLik(dflt)), max(abs(fixef(g1) - fixef(dflt)))))
  res$loglik_null <- as.numeric(logLik(g0))
  res$fixef_null <- named_num(fixef(g0))
  res$anova_g0_g1 <- table_block("anova(g0, g1)")
  res$confint_profile <- table_block('confint(g1, method = "profile")')
  res$confint_wald <- table_block('confint(g1, method = "Wald")')
  res$profile_sig01 <- table_block(
    'as.data.frame(profile(g1, which = ".sig01"))',
    list(note = paste("lme4's profile of the herd SD: .zeta = signed square root of the",
                      "deviance difference; the other columns are the conditional estimates",
                      "of the remaining parameters along the profile")))
  res$car_anova_type3 <- table_block("car::Anova(g1, type = 3)")
  res$car_anova_type2 <- table_block("car::Anova(g1, type = 2)")
  res$r2_nakagawa <- r2_block("g1")
  res$icc <- icc_block("g1")
  res$get_variance <- variance_block(
    "g1", "cbpp",
    "theoretical distribution-specific variance of the logit link: pi^2/3 (no other method in this version)")
  stopifnot(isTRUE(all.equal(res$get_variance$values$var.distribution, pi^2 / 3)))
  res$emmeans_period_link <- emm_block('emmeans(g1, "period")', 'summary(emmeans(g1, "period"))')
  res$emmeans_period_response <- emm_block(
    'emmeans(g1, "period")', 'summary(emmeans(g1, "period"), type = "response")')
  res$pairs_period_tukey <- table_block('summary(pairs(emmeans(g1, "period"), adjust = "tukey"))')
  res$pairs_period_holm <- table_block('summary(pairs(emmeans(g1, "period"), adjust = "holm"))')
  res$pairs_period_response_tukey <- table_block(
    'summary(pairs(emmeans(g1, "period"), adjust = "tukey"), type = "response")',
    list(note = "odds ratios (back-transformed log odds ratio contrasts); tests on the log scale"))
  write_case(res)
}

case_grouse_poisson <- function() {
  res <- header(
    "grouse_poisson", "grouseticks.csv",
    paste("fit <- glmer(TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION), data = grouseticks,",
          "family = poisson, control = glmerControl(tolPwrss = 1e-12))"),
    "fit", grouseticks, "poisson", "log", "Laplace",
    "none (cHEIGHT = HEIGHT - mean(HEIGHT) in the CSV); YEAR, BROOD, LOCATION factors",
    paste("The requested model (1 | BROOD) + (1 | LOCATION) fitted without problems",
          "(no observation-level INDEX term, unlike tests/reference/grouse_poisson.json).",
          "emmeans averages nothing here: cHEIGHT is at its mean (see ref_grid)."))
  nm_code <- "nm <- insight::null_model(fit)"
  nm <- run(nm_code)
  nm_fit <- nm$value
  mu <- exp(unname(fixef(nm_fit)[1]))
  res$car_anova_type3 <- table_block("car::Anova(fit, type = 3)")
  res$r2_nakagawa <- r2_block("fit")
  res$icc <- icc_block("fit")
  res$get_variance <- variance_block(
    "fit", "grouseticks",
    paste("lognormal approximation log1p(var(mu)/mu^2) = log1p(1/mu) for poisson(log),",
          "mu = exp(intercept of the null model TICKS ~ (1 | BROOD) + (1 | LOCATION))",
          "refitted by insight::null_model (see null_model); the only method in this version"))
  res$get_variance$null_model <- list(
    call = nm_code,
    refit_call = paste(deparse(nm_fit@call, width.cutoff = 500L), collapse = " "),
    loglik = as.numeric(logLik(nm_fit)),
    fixef = named_num(fixef(nm_fit)),
    mu = mu,
    log1p_inv_mu = log1p(1 / mu),
    warnings = I(nm$warnings), messages = I(nm$messages))
  stopifnot(isTRUE(all.equal(res$get_variance$values$var.distribution, log1p(1 / mu),
                             tolerance = 1e-12)))
  res$ref_grid <- table_block("ref_grid(fit)@grid")
  res$emmeans_year_link <- emm_block('emmeans(fit, "YEAR")', 'summary(emmeans(fit, "YEAR"))')
  res$emmeans_year_response <- emm_block(
    'emmeans(fit, "YEAR")', 'summary(emmeans(fit, "YEAR"), type = "response")')
  res$pairs_year_tukey <- table_block('summary(pairs(emmeans(fit, "YEAR"), adjust = "tukey"))')
  write_case(res)
}

case_penicillin_reml <- function() {
  res <- header(
    "penicillin_reml", "penicillin.csv",
    "fit <- lmerTest::lmer(diameter ~ 1 + (1 | plate) + (1 | sample), data = penicillin, REML = TRUE)",
    "fit", penicillin, "gaussian", "identity", "REML",
    "none (the CSV shipped in src/multilevel/datasets, = lme4::Penicillin); plate, sample factors",
    "Crossed random intercepts (plate: 24 levels, sample: 6 levels); var.random is their sum.")
  res$r2_nakagawa <- r2_block("fit")
  res$icc <- icc_block("fit")
  res$get_variance <- variance_block("fit", "penicillin", lmm_dist)
  write_case(res)
}

cases <- list(hsb_reml = case_hsb_reml, hsb_intercept_reml = case_hsb_intercept_reml,
              sleep_reml = case_sleep_reml, cbpp_laplace = case_cbpp_laplace,
              grouse_poisson = case_grouse_poisson, penicillin_reml = case_penicillin_reml)
for (nm in names(cases)) {
  if (length(only) && !(nm %in% only)) next
  cases[[nm]]()
}
