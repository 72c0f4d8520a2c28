# Time lme4::lmer on one benchmark case.
#
# Usage: Rscript run_lme4.R CSV FORMULA FACTORS REPEATS BUDGET_S REML
#   FACTORS: "col:lev1,lev2;col2" (levels optional; first level = reference)
#   REML: TRUE or FALSE (maximum likelihood)
# Prints one line "RESULT {json}" that benchmarks/run.py parses.
# Each timed fit is the whole lmer() call (formula processing included);
# one untimed warm-up fit comes first. If REPEATS fits would exceed BUDGET_S
# (judged by the warm-up), fewer are timed, but at least 3; if the warm-up alone
# exceeded BUDGET_S, it is the one timing reported (as runner_common.py).

args <- commandArgs(trailingOnly = TRUE)
stopifnot(length(args) == 6)
csv <- args[[1]]
form <- as.formula(args[[2]])
factors <- strsplit(args[[3]], ";", fixed = TRUE)[[1]]
repeats <- as.integer(args[[4]])
budget <- as.numeric(args[[5]])
reml <- as.logical(args[[6]])
stopifnot(!is.na(reml))

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

fit <- function() lmer(form, data = dat, REML = reml)
# Wall time from Sys.time() (microsecond resolution); CPU time from proc.time()
# (millisecond resolution). No gc() between fits, as in the Python runners.
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
if (warmup * repeats > budget) {
  repeats <- if (warmup > budget) 0L else max(min(3L, repeats), as.integer(budget / warmup))
}
runs <- if (repeats > 0) vapply(seq_len(repeats), function(i) timed(), numeric(2)) else matrix(warm)
wall <- runs[1, ]
cpu <- runs[2, ]

# REML criterion of a REML fit, deviance (-2 log-likelihood) of an ML fit
crit <- if (isREML(m)) REMLcrit(m) else deviance(m)
num <- function(x) paste0("[", paste(sprintf("%.6f", x), collapse = ", "), "]")
msgs <- m@optinfo$conv$lme4$messages
cat(sprintf(
  paste0(
    "RESULT {\"engine_version\": \"lme4 %s (R %s.%s)\", \"nobs\": %d, ",
    "\"warmup_s\": %.6f, \"warmup_only\": %s, \"reml\": %s, ",
    "\"times_s\": %s, \"cpu_s\": %s, \"evals\": %d, \"criterion\": %.10f, ",
    "\"optimizer\": \"%s\", \"converged\": %s, \"rss_before_fit_mb\": %.1f}\n"
  ),
  packageVersion("lme4"), R.version$major, R.version$minor, nobs(m), warmup,
  if (repeats == 0) "true" else "false", if (reml) "true" else "false",
  num(wall), num(cpu), as.integer(m@optinfo$feval), crit,
  m@optinfo$optimizer, if (is.null(msgs)) "true" else "false", rss_before
))
