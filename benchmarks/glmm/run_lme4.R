# Time lme4::glmer on one GLMM benchmark case.
#
# Usage: Rscript run_lme4.R CSV FORMULA FAMILY NAGQ FACTORS REPEATS BUDGET_S
#   FACTORS: "col:lev1,lev2;col2" (levels optional; first level = reference)
# Prints one line "RESULT {json}" that benchmarks/glmm/run.py parses.
# Each timed fit is the whole glmer() call with lme4's default control
# (formula processing included); one untimed warm-up fit comes first. If
# REPEATS fits would exceed BUDGET_S (judged by the warm-up), fewer are timed,
# but at least 3 (as common.py).
#
# Log-likelihood: logLik(m) as lme4 reports it ("loglik_reported"). For
# nAGQ > 1, lme4 1.1-31 leaves the saturated-model term sum(log f(y | mu = y))
# out of it; "loglik_full" adds it back (0 for 0/1 responses), so it is the full
# marginal log-likelihood like the other engines' numbers.

args <- commandArgs(trailingOnly = TRUE)
stopifnot(length(args) == 7)
csv <- args[[1]]
form <- as.formula(args[[2]])
fam <- switch(args[[3]], binomial = binomial, poisson = poisson, stop("unknown family"))
nagq <- as.integer(args[[4]])
factors <- strsplit(args[[5]], ";", fixed = TRUE)[[1]]
repeats <- as.integer(args[[6]])
budget <- as.numeric(args[[7]])

vm_hwm_mb <- function() {
  line <- grep("^VmHWM:", readLines("/proc/self/status"), value = TRUE)
  as.numeric(gsub("[^0-9]", "", line)) / 1024
}

suppressPackageStartupMessages(library(lme4))
dat <- read.csv(csv)
for (spec in factors[nzchar(factors)]) {
  parts <- strsplit(spec, ":", fixed = TRUE)[[1]]
  col <- parts[[1]]
  if (length(parts) > 1) {
    dat[[col]] <- factor(as.character(dat[[col]]), levels = strsplit(parts[[2]], ",")[[1]])
  } else {
    dat[[col]] <- factor(dat[[col]])
  }
}
rss_before <- vm_hwm_mb()

warns <- character(0)
fit <- function() {
  warns <<- character(0)
  withCallingHandlers(
    glmer(form, data = dat, family = fam, nAGQ = nagq),
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
warmup <- timed()[[1]]
if (warmup * repeats > budget) repeats <- max(min(3L, repeats), as.integer(budget / warmup))
runs <- vapply(seq_len(repeats), function(i) timed(), numeric(2))
wall <- runs[1, ]
cpu <- runs[2, ]

ll <- as.numeric(logLik(m))
saturated <- 0
if (nagq > 1) {
  y <- m@resp$y
  w <- m@resp$weights # binomial: numbers of trials; y is the proportion
  saturated <- if (args[[3]] == "binomial") {
    sum(dbinom(round(y * w), round(w), y, log = TRUE))
  } else {
    sum(dpois(y, y, log = TRUE))
  }
}

esc <- function(s) gsub("[\"\\\\]", "'", gsub("[\r\n]+", " ", s))
num <- function(x) paste0("[", paste(sprintf("%.6f", x), collapse = ", "), "]")
fe <- fixef(m)
fixef_json <- paste0(
  "{", paste(sprintf("\"%s\": %.10g", esc(names(fe)), fe), collapse = ", "), "}"
)
msgs <- m@optinfo$conv$lme4$messages
all_warn <- unique(c(warns, msgs))
# "nearly unidentifiable" is a scaling check, not a convergence failure
converged <- m@optinfo$conv$opt == 0 && !any(grepl("failed to converge", all_warn))
warn_json <- paste0("[", paste(sprintf("\"%s\"", esc(all_warn)), collapse = ", "), "]")
if (!length(all_warn)) warn_json <- "[]"
cat(sprintf(
  paste0(
    "RESULT {\"engine_version\": \"lme4 %s (R %s.%s)\", \"nobs\": %d, ",
    "\"warmup_s\": %.6f, \"times_s\": %s, \"cpu_s\": %s, \"evals\": %d, ",
    "\"loglik_reported\": %.10f, \"loglik_full\": %.10f, \"fixef\": %s, ",
    "\"converged\": %s, \"note\": \"optimizer %s\", \"warnings\": %s, ",
    "\"rss_before_fit_mb\": %.1f}\n"
  ),
  packageVersion("lme4"), R.version$major, R.version$minor, nobs(m), warmup,
  num(wall), num(cpu), as.integer(m@optinfo$feval), ll, ll + saturated, fixef_json,
  if (converged) "true" else "false", paste(m@optinfo$optimizer, collapse = "+"),
  warn_json, rss_before
))
