# Time lmerTest's Satterthwaite table on one CSV (companion of satterthwaite_large.py).
#
# Usage: Rscript satterthwaite_lmertest.R CSV FORMULA REPEATS
# Prints one line "RESULT {json}".  Phases, each timed REPEATS times:
#   fit      lme4::lmer(formula, REML = TRUE)
#   lmertest lmerTest::lmer(...): the same fit plus lmerTest's derivative set-up
#            (Hessian of the deviance in the variance parameters, Jacobian of vcov)
#   convert  lmerTest::as_lmerModLmerTest(lme4 fit): that set-up alone
#   summary  summary(m, ddf = "Satterthwaite") on the lmerTest fit
# Peak resident memory (VmHWM) is read after the data are loaded and after each phase;
# gc()'s "max used" (R heap, Mb) is reset before and read after each phase.

args <- commandArgs(trailingOnly = TRUE)
stopifnot(length(args) == 3)
csv <- args[[1]]
form <- as.formula(args[[2]])
repeats <- as.integer(args[[3]])

vm_hwm_mb <- function() {
  line <- grep("^VmHWM:", readLines("/proc/self/status"), value = TRUE)
  as.numeric(gsub("[^0-9]", "", line)) / 1024
}
heap_max_mb <- function(g) sum(g[, ncol(g)])  # last column: "max used" in Mb

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})
dat <- read.csv(csv)
dat$g <- factor(dat$g)
hwm <- c(loaded = vm_hwm_mb())

timed <- function(expr_fun) {
  wall <- numeric(repeats)
  heap <- numeric(repeats)
  for (i in seq_len(repeats)) {
    invisible(gc(reset = TRUE))
    t0 <- Sys.time()
    val <- expr_fun()
    wall[i] <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
    heap[i] <- heap_max_mb(gc())
  }
  list(value = val, wall = wall, heap = heap)
}

fit <- timed(function() lme4::lmer(form, data = dat, REML = TRUE))
hwm <- c(hwm, fit = vm_hwm_mb())
lt <- timed(function() lmerTest::lmer(form, data = dat, REML = TRUE))
hwm <- c(hwm, lmertest = vm_hwm_mb())
m <- lt$value
# lmerTest's own work alone: the derivative set-up on an existing lme4 fit
cv <- timed(function() lmerTest::as_lmerModLmerTest(fit$value))
hwm <- c(hwm, convert = vm_hwm_mb())
sm <- timed(function() summary(m, ddf = "Satterthwaite"))
hwm <- c(hwm, summary = vm_hwm_mb())
co <- coef(sm$value)

num <- function(x) paste0("[", paste(sprintf("%.10g", x), collapse = ", "), "]")
phase <- function(p) sprintf("{\"wall_s\": %s, \"heap_max_mb\": %s}", num(p$wall), num(p$heap))
cat(sprintf(
  paste0(
    "RESULT {\"engine_version\": \"lmerTest %s, lme4 %s (R %s.%s)\", \"nobs\": %d, ",
    "\"ngroups\": %d, \"fit\": %s, \"lmertest\": %s, \"convert\": %s, \"summary\": %s, ",
    "\"vm_hwm_mb\": {\"loaded\": %.1f, \"fit\": %.1f, \"lmertest\": %.1f, ",
    "\"convert\": %.1f, \"summary\": %.1f}, ",
    "\"names\": [%s], \"estimate\": %s, \"se\": %s, \"df\": %s, \"t\": %s, \"p\": %s, ",
    "\"reml_criterion\": %.10f}\n"
  ),
  packageVersion("lmerTest"), packageVersion("lme4"), R.version$major, R.version$minor,
  nobs(m), nlevels(dat$g), phase(fit), phase(lt), phase(cv), phase(sm),
  hwm[["loaded"]], hwm[["fit"]], hwm[["lmertest"]], hwm[["convert"]], hwm[["summary"]],
  paste0("\"", rownames(co), "\"", collapse = ", "),
  num(co[, "Estimate"]), num(co[, "Std. Error"]), num(co[, "df"]), num(co[, "t value"]),
  num(co[, "Pr(>|t|)"]), REMLcrit(m)
))
