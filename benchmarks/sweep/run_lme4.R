# Time lme4 on one model: Rscript run_lme4.R KEY [REPEATS]
# warm-up fit, then median of REPEATS (default 3; small fits repeated up to 25 times / ~1 s).
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
args <- commandArgs(TRUE); key <- args[1]; reps <- if (length(args) > 1) as.integer(args[2]) else 3L
M <- fromJSON("benchmarks/sweep/models.json"); s <- M$spec[[key]]
d <- read.csv(s$csv, stringsAsFactors = FALSE, na.strings = c("", "NA"))
for (c in s$factors) d[[c]] <- factor(as.character(d[[c]]))
f <- as.formula(s$formula)
res <- list(engine = "lme4", key = key, reml = s$reml, n = nrow(d))
warns <- character(0)
out <- tryCatch({
  t0 <- proc.time()[["elapsed"]]
  m <- withCallingHandlers(suppressMessages(lmer(f, data = d, REML = s$reml)),
         warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") })
  warm <- proc.time()[["elapsed"]] - t0
  msgs <- c(m@optinfo$conv$lme4$messages, m@optinfo$warnings)
  times <- numeric(0)
  n <- if (warm > 90) 0 else reps
  while (length(times) < n || (n > 0 && length(times) < 25 && sum(times) < 1.0)) {
    t0 <- proc.time()[["elapsed"]]; m <- suppressMessages(suppressWarnings(lmer(f, data = d, REML = s$reml)))
    times <- c(times, proc.time()[["elapsed"]] - t0)
  }
  # elapsed time has ~1 ms resolution; for fits under 50 ms report the mean of a batch of k fits
  batch_ms <- NA
  if (length(times) && median(times) < 0.05) {
    k <- min(100L, max(10L, as.integer(ceiling(1 / max(median(times), 0.001)))))
    t0 <- proc.time()[["elapsed"]]; for (i in 1:k) suppressMessages(suppressWarnings(lmer(f, data = d, REML = s$reml)))
    batch_ms <- 1000 * (proc.time()[["elapsed"]] - t0) / k
  }
  crit <- if (isREML(m)) REMLcrit(m) else deviance(m)
  list(warmup_s = warm, times_s = times, median_ms = if (!is.na(batch_ms)) batch_ms else 1000 * median(if (length(times)) times else warm),
       batch_mean_ms = batch_ms, evals = m@optinfo$feval, criterion = crit,
       converged = m@optinfo$conv$opt == 0 && !any(grepl("converge|Hessian|eigenvalue|rescal", c(warns, msgs))),
       singular = isSingular(m), conv_messages = unique(c(warns, msgs)))
}, error = function(e) list(error = conditionMessage(e)))
res <- c(res, out)
cat("RESULT ", toJSON(res, auto_unbox = TRUE, digits = NA), "\n", sep = "")
