# Time lme4::lmer on one benchmark case.
#
# Usage: Rscript run_lme4.R CSV FORMULA FACTORS REPEATS
#   FACTORS: "col:lev1,lev2;col2" (levels optional; first level = reference)
# Prints one line "RESULT {json}" that benchmarks/run.py parses.
# Each timed fit is the whole lmer() call (formula processing included);
# one untimed warm-up fit comes first.

args <- commandArgs(trailingOnly = TRUE)
stopifnot(length(args) == 4)
csv <- args[[1]]
form <- as.formula(args[[2]])
factors <- strsplit(args[[3]], ";", fixed = TRUE)[[1]]
repeats <- as.integer(args[[4]])

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

fit <- function() lmer(form, data = dat, REML = TRUE)
m <- fit() # warm-up
wall <- numeric(repeats)
cpu <- numeric(repeats)
for (i in seq_len(repeats)) {
  st <- system.time(m <- fit())
  wall[[i]] <- st[["elapsed"]]
  cpu[[i]] <- st[["user.self"]] + st[["sys.self"]]
}

num <- function(x) paste0("[", paste(sprintf("%.6f", x), collapse = ", "), "]")
msgs <- m@optinfo$conv$lme4$messages
cat(sprintf(
  paste0(
    "RESULT {\"engine_version\": \"lme4 %s (R %s.%s)\", \"nobs\": %d, ",
    "\"times_s\": %s, \"cpu_s\": %s, \"evals\": %d, \"criterion\": %.10f, ",
    "\"optimizer\": \"%s\", \"converged\": %s, \"rss_before_fit_mb\": %.1f}\n"
  ),
  packageVersion("lme4"), R.version$major, R.version$minor, nobs(m),
  num(wall), num(cpu), as.integer(m@optinfo$feval), REMLcrit(m),
  m@optinfo$optimizer, if (is.null(msgs)) "true" else "false", rss_before
))
