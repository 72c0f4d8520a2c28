# Time one R engine -- lme4 (glmer, glmer.nb), glmmTMB or ordinal (clmm) -- on one GLMM
# benchmark case.
#
# Usage: Rscript run_lme4.R PACKAGE CSV FORMULA FAMILY NAGQ FACTORS REPEATS BUDGET_S
#   PACKAGE: "lme4", "glmmTMB" or "ordinal"
#   FAMILY:  the case's family as multilevel spells it; mapped here:
#              binomial, poisson    lme4 glmer(family = binomial | poisson, nAGQ = K);
#                                   glmmTMB(family = binomial | poisson)
#              negative_binomial    lme4 glmer.nb(formula, data); glmmTMB(family = nbinom2)
#              Gamma(log)           glmer(family = Gamma(link = "log"), nAGQ = K);
#                                   glmmTMB(family = Gamma(link = "log"))
#              ordinal              ordinal clmm(formula, data, nAGQ = K) (logit link,
#                                   flexible thresholds: its defaults); package
#                                   "ordinal" fits this family only
#            glmmTMB has the Laplace approximation only (NAGQ must be 1).
#   FACTORS: "col:lev1,lev2;col2" (levels optional; first level = reference);
#            "col:lev1,lev2:ordered" makes an ordered factor (the clmm response)
# Prints one line "RESULT {json}" that benchmarks/glmm/run.py parses.
# Each timed fit is the whole fitting call with the package's default control
# (formula processing included); one untimed warm-up fit comes first. If
# REPEATS fits would exceed BUDGET_S (judged by the warm-up), fewer are timed,
# but at least 3; if the warm-up alone took longer than BUDGET_S, no further
# fit is made and the warm-up is the one timing ("warmup_only"), as common.py.
#
# Log-likelihood: logLik(m) as the package reports it ("loglik_reported").
# For lme4 with nAGQ > 1, lme4 1.1-31 leaves the saturated-model term
# sum(log f(y | mu = y)) out of it; "loglik_full" adds it back (0 for 0/1
# responses), so it is the full marginal log-likelihood like the other
# engines' numbers. glmmTMB's logLik is the full Laplace log-likelihood.
# lme4's Gamma logLik is evaluated at a moment estimate of the shape (glmer
# does not estimate it), not at its maximum: "loglik_comparable" is false.
# ordinal's logLik(clmm) is the full Laplace (or AGQ) log-likelihood; its
# "fixef" here are the thresholds (alpha, named "1|2", ...) then beta.

args <- commandArgs(trailingOnly = TRUE)
stopifnot(length(args) == 8)
pkg <- args[[1]]
csv <- args[[2]]
form <- as.formula(args[[3]])
family_name <- args[[4]]
nagq <- as.integer(args[[5]])
factors <- strsplit(args[[6]], ";", fixed = TRUE)[[1]]
repeats <- as.integer(args[[7]])
budget <- as.numeric(args[[8]])

vm_hwm_mb <- function() {
  line <- grep("^VmHWM:", readLines("/proc/self/status"), value = TRUE)
  as.numeric(gsub("[^0-9]", "", line)) / 1024
}

if (pkg == "lme4") {
  suppressPackageStartupMessages(library(lme4))
  version <- sprintf("lme4 %s", packageVersion("lme4"))
  fit_once <- switch(family_name,
    binomial = function() glmer(form, data = dat, family = binomial, nAGQ = nagq),
    poisson = function() glmer(form, data = dat, family = poisson, nAGQ = nagq),
    negative_binomial = {
      if (nagq != 1) stop("glmer.nb: only nAGQ = 1 is wired here")
      function() glmer.nb(form, data = dat)
    },
    "Gamma(log)" = function() glmer(form, data = dat, family = Gamma(link = "log"), nAGQ = nagq),
    stop("unknown family ", family_name)
  )
} else if (pkg == "glmmTMB") {
  suppressPackageStartupMessages(library(glmmTMB))
  version <- sprintf("glmmTMB %s (TMB %s)", packageVersion("glmmTMB"), packageVersion("TMB"))
  if (nagq != 1) stop("glmmTMB has the Laplace approximation only (nAGQ = 1)")
  tmb_family <- switch(family_name,
    binomial = binomial,
    poisson = poisson,
    negative_binomial = nbinom2,
    "Gamma(log)" = Gamma(link = "log"),
    stop("unknown family ", family_name)
  )
  fit_once <- function() glmmTMB(form, data = dat, family = tmb_family)
} else if (pkg == "ordinal") {
  suppressPackageStartupMessages(library(ordinal))
  version <- sprintf("ordinal %s", packageVersion("ordinal"))
  if (family_name != "ordinal") stop("package ordinal fits the ordinal family only")
  fit_once <- function() clmm(form, data = dat, nAGQ = nagq)
} else {
  stop("unknown package ", pkg)
}

dat <- read.csv(csv)
for (spec in factors[nzchar(factors)]) {
  parts <- strsplit(spec, ":", fixed = TRUE)[[1]]
  col <- parts[[1]]
  if (length(parts) > 1) {
    ordered <- length(parts) > 2 && parts[[3]] == "ordered"
    dat[[col]] <- factor(
      as.character(dat[[col]]),
      levels = strsplit(parts[[2]], ",")[[1]], ordered = ordered
    )
  } else {
    dat[[col]] <- factor(dat[[col]])
  }
}
rss_before <- vm_hwm_mb()

warns <- character(0)
fit <- function() {
  warns <<- character(0)
  withCallingHandlers(
    fit_once(),
    warning = function(w) {
      warns <<- c(warns, conditionMessage(w))
      invokeRestart("muffleWarning")
    }
  )
}
timed <- function() {
  c0 <- proc.time()
  t0 <- Sys.time()
  m <<- fit()
  t1 <- Sys.time()
  c1 <- proc.time() - c0
  c(as.numeric(difftime(t1, t0, units = "secs")), c1[["user.self"]] + c1[["sys.self"]])
}
warm <- timed()
warmup <- warm[[1]]
warmup_only <- warmup > budget
if (warmup_only) {
  runs <- matrix(warm, nrow = 2)
} else {
  if (warmup * repeats > budget) repeats <- max(min(3L, repeats), as.integer(budget / warmup))
  runs <- vapply(seq_len(repeats), function(i) timed(), numeric(2))
}
wall <- runs[1, ]
cpu <- runs[2, ]

ll <- as.numeric(logLik(m))
saturated <- 0
if (pkg == "lme4" && nagq > 1) {
  y <- m@resp$y
  w <- m@resp$weights # binomial: numbers of trials; y is the proportion
  saturated <- if (family_name == "binomial") {
    sum(dbinom(round(y * w), round(w), y, log = TRUE))
  } else if (family_name == "poisson") {
    sum(dpois(y, y, log = TRUE))
  } else {
    stop("saturated term not wired for ", family_name)
  }
}
comparable <- !(pkg == "lme4" && family_name == "Gamma(log)")

if (pkg == "lme4") {
  fe <- fixef(m)
  evals <- as.integer(m@optinfo$feval)
  msgs <- m@optinfo$conv$lme4$messages
  all_warn <- unique(c(warns, msgs))
  # "nearly unidentifiable" is a scaling check, not a convergence failure;
  # glmer.nb's theta search warns "iteration/alternation limit reached"
  converged <- m@optinfo$conv$opt == 0 &&
    !any(grepl("failed to converge|limit reached", all_warn))
  note <- paste("optimizer", paste(m@optinfo$optimizer, collapse = "+"))
  if (family_name == "negative_binomial") {
    note <- sprintf(
      "%s; glmer.nb theta %.6f; evals = the final glmer refit only",
      note, getME(m, "glmer.nb.theta")
    )
  } else if (family_name == "Gamma(log)") {
    note <- sprintf(
      "%s; sigma %.6f (moment estimate after the fit; logLik not at the ML shape)",
      note, sigma(m)
    )
  }
} else if (pkg == "ordinal") {
  fe <- c(m$alpha, m$beta)
  opt <- m$optRes # nlminb (clmm.control's default method)
  evals <- as.integer(opt$evaluations[["function"]])
  all_warn <- unique(warns)
  # ordinal's own checks: the optimiser's code and a positive definite Hessian
  hess_ev <- eigen(m$Hessian, symmetric = TRUE, only.values = TRUE)$values
  converged <- isTRUE(opt$convergence == 0) && all(hess_ev > 0)
  note <- sprintf(
    paste(
      "nlminb: %d iterations, +%d gradient evals, convergence %d (%s);",
      "max|grad| %.2e; condHess %.3g; sd %s"
    ),
    as.integer(opt$iterations), as.integer(opt$evaluations[["gradient"]]),
    as.integer(opt$convergence), opt$message, max(abs(m$gradient)),
    max(hess_ev) / min(hess_ev), paste(sprintf("%.6f", unlist(m$ST)), collapse = ", ")
  )
} else {
  fe <- fixef(m)$cond
  evals <- as.integer(m$fit$evaluations[["function"]])
  all_warn <- unique(warns)
  converged <- isTRUE(m$fit$convergence == 0) && isTRUE(m$sdr$pdHess)
  note <- sprintf(
    "nlminb: %d iterations, +%d gradient evals, convergence %d (%s), pdHess %s",
    as.integer(m$fit$iterations), as.integer(m$fit$evaluations[["gradient"]]),
    as.integer(m$fit$convergence), m$fit$message, m$sdr$pdHess
  )
  if (family_name %in% c("negative_binomial", "Gamma(log)")) {
    note <- sprintf("%s; sigma %.6f", note, sigma(m))
  }
}

esc <- function(s) gsub("[\"\\\\]", "'", gsub("[\r\n]+", " ", s))
num <- function(x) paste0("[", paste(sprintf("%.6f", x), collapse = ", "), "]")
fixef_json <- paste0(
  "{", paste(sprintf("\"%s\": %.10g", esc(names(fe)), fe), collapse = ", "), "}"
)
warn_json <- paste0("[", paste(sprintf("\"%s\"", esc(all_warn)), collapse = ", "), "]")
if (!length(all_warn)) warn_json <- "[]"
tf <- function(b) if (b) "true" else "false"
cat(sprintf(
  paste0(
    "RESULT {\"engine_version\": \"%s (R %s.%s)\", \"nobs\": %d, ",
    "\"warmup_s\": %.6f, \"warmup_only\": %s, \"times_s\": %s, \"cpu_s\": %s, ",
    "\"evals\": %d, \"loglik_reported\": %.10f, \"loglik_full\": %.10f, ",
    "\"loglik_comparable\": %s, \"fixef\": %s, \"converged\": %s, \"note\": \"%s\", ",
    "\"warnings\": %s, \"rss_before_fit_mb\": %.1f}\n"
  ),
  version, R.version$major, R.version$minor, nobs(m), warmup, tf(warmup_only),
  num(wall), num(cpu), evals, ll, ll + saturated, tf(comparable), fixef_json,
  tf(converged), esc(note), warn_json, rss_before
))
