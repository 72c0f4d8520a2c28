# One nlme fit of the longitudinal AR(1) benchmark model, driven by run.py.
#
#   Rscript benchmarks/longitudinal/run_nlme.R DATA.csv
#
# Fits lme(y ~ t, random = ~ t | subject, correlation = corAR1()) (REML, nlme's
# default control). If that fit stops with an error other than running out of
# memory, it is fitted again with control = lmeControl(opt = "optim") and the
# result says so. Only the lme() call is timed (system.time); reading the CSV is
# not. Prints "FIT_START <epoch seconds>" just before each fit (run.py's time
# limit counts from the latest one) and, at the end, one line "RESULT {json}".

suppressPackageStartupMessages(library(nlme))

args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 1) stop("usage: Rscript run_nlme.R DATA.csv")
d <- read.csv(args[1])
d$subject <- factor(d$subject)

json_str <- function(x) {
  x <- gsub("\\\\", "\\\\\\\\", x)
  x <- gsub("\"", "\\\\\"", x)
  x <- gsub("[\r\n\t]", " ", x)
  paste0("\"", x, "\"")
}
json_num <- function(x, digits = 10) {
  if (is.null(x) || is.na(x)) "null" else sprintf(paste0("%.", digits, "g"), x)
}

is_memory_error <- function(e) grepl("cannot allocate|memory", conditionMessage(e), ignore.case = TRUE)

fit_with <- function(control) {
  invisible(gc(reset = TRUE))
  cat(sprintf("FIT_START %.3f\n", as.numeric(Sys.time())))
  flush(stdout())
  fit <- NULL
  err <- NULL
  tm <- system.time(
    fit <- tryCatch(
      lme(y ~ t, random = ~ t | subject, data = d, correlation = corAR1(), control = control),
      error = function(e) {
        err <<- e
        NULL
      }
    )
  )
  g <- gc()
  list(fit = fit, err = err, elapsed = unname(tm["elapsed"]),
       cpu = unname(tm["user.self"] + tm["sys.self"]),
       gc_max_mb = sum(g[, ncol(g)]))  # "max used (Mb)", Ncells + Vcells
}

attempts <- list()
res <- fit_with(lmeControl())
attempts[[1]] <- list(control = "default", res = res)
if (is.null(res$fit) && !is_memory_error(res$err)) {
  res <- fit_with(lmeControl(opt = "optim"))
  attempts[[2]] <- list(control = "opt = \"optim\"", res = res)
}

att_json <- vapply(attempts, function(a) {
  r <- a$res
  paste0(
    "{\"control\": ", json_str(a$control),
    ", \"elapsed_s\": ", json_num(r$elapsed),
    ", \"cpu_s\": ", json_num(r$cpu),
    ", \"gc_max_mb\": ", json_num(r$gc_max_mb),
    ", \"error\": ", if (is.null(r$err)) "null" else json_str(conditionMessage(r$err)),
    "}"
  )
}, "")

final <- attempts[[length(attempts)]]
fit <- final$res$fit
if (!is.null(fit)) {
  ll <- as.numeric(logLik(fit))
  phi <- unname(coef(fit$modelStruct$corStruct, unconstrained = FALSE)[["Phi"]])
} else {
  ll <- NA
  phi <- NA
}
si <- sessionInfo()
cat("RESULT ", paste0(
  "{\"ok\": ", if (is.null(fit)) "false" else "true",
  ", \"control\": ", json_str(final$control),
  ", \"retried_with_optim\": ", if (length(attempts) > 1) "true" else "false",
  ", \"elapsed_s\": ", json_num(final$res$elapsed),
  ", \"cpu_s\": ", json_num(final$res$cpu),
  ", \"gc_max_mb\": ", json_num(final$res$gc_max_mb),
  ", \"loglik\": ", json_num(ll, 17),
  ", \"phi\": ", json_num(phi, 17),
  ", \"nobs\": ", nrow(d),
  ", \"ngroups\": ", nlevels(d$subject),
  ", \"attempts\": [", paste(att_json, collapse = ", "), "]",
  ", \"r_version\": ", json_str(R.version.string),
  ", \"nlme_version\": ", json_str(as.character(packageVersion("nlme"))),
  ", \"blas\": ", json_str(if (is.null(si$BLAS)) "" else si$BLAS),
  ", \"lapack\": ", json_str(if (is.null(si$LAPACK)) "" else si$LAPACK),
  "}"
), "\n", sep = "")
