# Benchmark data and R timings for large NB / Gamma GLMMs.
#
# Run from the repository root (single-threaded):
#   OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 Rscript tools/r_references/families_bench.R
#
# Simulates (seed 1)
#   n = 200,000 rows, 2,000 groups of 100 rows (g = 1..2000, rows in group order)
#   x ~ N(0, 1), b_g ~ N(0, 0.5^2), log mu = 1 + 0.3 x + b_g
#   NB2:   y ~ NB(mean mu, size theta = 2)   (Var = mu + mu^2/2)
#   Gamma: y ~ Gamma(shape 5, rate 5/mu)     (mean mu, Var = mu^2/5)
# Random numbers are drawn in this order: x (n), b (2000), NB y (n), Gamma y (n);
# both data sets share x, g and b.
# Writes /tmp/bench_nb.csv and /tmp/bench_gamma.csv (columns id, y, x, g; not in
# the repository, too big) and tests/reference/families/timing.json with one
# timed fit per engine, fitted to the CSVs as read back.

Sys.setenv(OMP_NUM_THREADS = "1", OPENBLAS_NUM_THREADS = "1")
options(glmmTMB.cores = 1L, warn = 1)
suppressPackageStartupMessages({
  library(glmmTMB)
  library(lme4)
  library(jsonlite)
})

args_all <- commandArgs(trailingOnly = FALSE)
script_path <- sub("^--file=", "", args_all[grep("^--file=", args_all)])
root <- if (length(script_path)) normalizePath(file.path(dirname(script_path), "..", "..")) else getwd()
ref_dir <- file.path(root, "tests", "reference", "families")
dir.create(ref_dir, recursive = TRUE, showWarnings = FALSE)

# ---------------------------------------------------------------- simulate
n_groups <- 2000L
per_group <- 100L
n <- n_groups * per_group
set.seed(1)
x <- rnorm(n)
b <- rnorm(n_groups, 0, 0.5)
g <- rep(seq_len(n_groups), each = per_group)
mu <- exp(1 + 0.3 * x + b[g])
y_nb <- rnbinom(n, size = 2, mu = mu)
y_gamma <- rgamma(n, shape = 5, rate = 5 / mu)

write.csv(data.frame(id = seq_len(n), y = y_nb, x = x, g = g), "/tmp/bench_nb.csv",
          row.names = FALSE)
write.csv(data.frame(id = seq_len(n), y = y_gamma, x = x, g = g), "/tmp/bench_gamma.csv",
          row.names = FALSE)
bench_nb <- read.csv("/tmp/bench_nb.csv")
bench_nb$g <- factor(bench_nb$g, levels = seq_len(n_groups))
bench_gamma <- read.csv("/tmp/bench_gamma.csv")
bench_gamma$g <- factor(bench_gamma$g, levels = seq_len(n_groups))

# ---------------------------------------------------------------- timing
loadavg <- function() trimws(readLines("/proc/loadavg", warn = FALSE))

time_one <- function(name, cl, extract) {
  msgs <- character(0)
  load_before <- loadavg()
  t <- system.time(fit <- withCallingHandlers(
    eval(cl),
    warning = function(w) {
      msgs <<- c(msgs, paste("warning:", conditionMessage(w)))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      msgs <<- c(msgs, paste("message:", trimws(conditionMessage(m))))
      invokeRestart("muffleMessage")
    }))
  load_after <- loadavg()
  ex <- extract(fit)
  # lme4: any convergence-check message (incl. 'nearly unidentifiable') counts
  # as not converged, as in glmm_families.R
  if (any(grepl("converge|limit reached|unidentifiable", msgs, ignore.case = TRUE)))
    ex$converged <- FALSE
  res <- c(list(
    name = name,
    call = paste(deparse(cl, width.cutoff = 500L), collapse = " "),
    elapsed_s = t[["elapsed"]],
    cpu_s = t[["user.self"]] + t[["sys.self"]],
    loadavg_before = load_before,
    loadavg_after = load_after,
    messages = I(unique(msgs))), ex)
  cat(sprintf("%-22s %8.2f s  (load %s)\n", name, t[["elapsed"]], load_after))
  res
}
tmb_extract <- function(fit) list(
  loglik = as.numeric(logLik(fit)),
  fixef = as.list(fixef(fit)$cond),
  ranef_sd = unname(attr(VarCorr(fit)$cond$g, "stddev")),
  sigma = sigma(fit),
  nlminb_iterations = fit$fit$iterations,
  nlminb_evaluations = as.list(fit$fit$evaluations),
  converged = isTRUE(fit$fit$convergence == 0) && isTRUE(fit$sdr$pdHess))
lme4_extract <- function(fit) list(
  loglik = as.numeric(logLik(fit)),
  fixef = as.list(fixef(fit)),
  ranef_sd = unname(attr(VarCorr(fit)$g, "stddev")),
  sigma = sigma(fit),
  nb_theta = if (inherits(fit, "glmerMod") && grepl("Negative Binomial", family(fit)$family))
    getME(fit, "glmer.nb.theta") else NULL,
  lme4_theta = unname(getME(fit, "theta")),
  converged = length(fit@optinfo$conv$lme4$messages) == 0)

runs <- list(
  time_one("glmmTMB_nbinom2",
           quote(glmmTMB(y ~ x + (1 | g), data = bench_nb, family = nbinom2)),
           tmb_extract),
  time_one("glmmTMB_Gamma_log",
           quote(glmmTMB(y ~ x + (1 | g), data = bench_gamma, family = Gamma(link = "log"))),
           tmb_extract),
  time_one("lme4_glmer.nb",
           quote(glmer.nb(y ~ x + (1 | g), data = bench_nb)),
           lme4_extract),
  time_one("lme4_glmer_Gamma_log",
           quote(glmer(y ~ x + (1 | g), data = bench_gamma, family = Gamma(link = "log"))),
           lme4_extract))
names(runs) <- vapply(runs, `[[`, "", "name")

cpu_model <- tryCatch({
  l <- grep("^model name", readLines("/proc/cpuinfo"), value = TRUE)[1]
  trimws(sub("^[^:]*:", "", l))
}, error = function(e) NA_character_)

out <- list(
  description = paste(
    "One timed fit per engine (elapsed seconds, single-threaded:",
    "OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, glmmTMB parallel = 1) on simulated",
    "data: n = 200000, 2000 groups of 100, seed 1, x ~ N(0,1), b ~ N(0, 0.5^2),",
    "log mu = 1 + 0.3 x + b; NB2 with theta = 2 (/tmp/bench_nb.csv) and Gamma",
    "with shape 5 (/tmp/bench_gamma.csv); generator tools/r_references/families_bench.R.",
    "The machine has 2 cores and other work was running (see loadavg_*), so",
    "timings are indicative only. Estimates are included as a sanity check",
    "(not reference values). lme4's glmer Gamma fit does not estimate the",
    "shape by maximum likelihood (sigma is computed after the fit), so its",
    "loglik, sigma and ranef_sd are not comparable with glmmTMB's;",
    "lme4_theta is getME(fit, 'theta'). converged: glmmTMB nlminb code 0 and",
    "pdHess; lme4 no convergence-check message or warning (any",
    "'converge' / 'unidentifiable' warning counts as not converged)."),
  r_version = R.version.string,
  package_versions = list(glmmTMB = utils::packageDescription("glmmTMB")$Version,
                          TMB = utils::packageDescription("TMB")$Version,
                          lme4 = utils::packageDescription("lme4")$Version),
  cpu = cpu_model,
  ncores = parallel::detectCores(),
  data = list(nb = "/tmp/bench_nb.csv", gamma = "/tmp/bench_gamma.csv",
              nobs = n, ngroups = n_groups,
              true = list(intercept = 1, x = 0.3, ranef_sd = 0.5, nb_theta = 2,
                          gamma_shape = 5)),
  runs = runs)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null"),
           file.path(ref_dir, "timing.json"))
cat("wrote", file.path(ref_dir, "timing.json"), "\n")
