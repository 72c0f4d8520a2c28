# Export the real data sets of the benchmark's cases k-t and u-z (benchmarks/cases.py)
# from R's packages, the columns the formulas use, rows with missing values in
# them dropped.  Run once from this directory: Rscript export_real.R
# (R 4.2.2, lme4 1.1.31, mlmRev 1.0.8, nlme 3.1.162 here).
suppressPackageStartupMessages({library(lme4); library(mlmRev); library(nlme)})
out <- function(d, cols, name) {
  d <- as.data.frame(d)[, cols]
  d <- d[complete.cases(d), ]
  write.csv(d, file.path("real", paste0(name, ".csv")), row.names = FALSE, quote = FALSE)
}
dir.create("real", showWarnings = FALSE)
out(mlmRev::ScotsSec, c("attain", "verbal", "sex", "primary", "second"), "scotssec")
out(mlmRev::star, c("math", "gr", "cltype", "sx", "eth", "id", "tch", "sch"), "star")
out(mlmRev::Chem97, c("score", "gcsecnt", "school", "lea"), "chem97")
out(mlmRev::Exam, c("normexam", "standLRT", "school"), "exam")
out(mlmRev::bdf, c("langPOST", "IQ.verb", "sex", "ses", "schoolNR"), "bdf")
out(nlme::Machines, c("score", "Machine", "Worker"), "machines")
out(lme4::Pastes, c("strength", "batch", "cask"), "pastes")
out(nlme::Oxboys, c("height", "age", "Subject"), "oxboys")
out(nlme::Orthodont, c("distance", "age", "Sex", "Subject"), "orthodont")
out(mlmRev::Early, c("cog", "age", "trt", "id"), "early")
out(nlme::Pixel, c("pixel", "day", "Dog", "Side"), "pixel")
out(nlme::Wafer, c("current", "voltage", "Wafer", "Site"), "wafer")
out(nlme::Rail, c("travel", "Rail"), "rail")
out(nlme::BodyWeight, c("weight", "Time", "Diet", "Rat"), "bodyweight")
out(nlme::Oats, c("yield", "nitro", "Variety", "Block"), "oats")
out(nlme::Alfalfa, c("Yield", "Date", "Variety", "Block"), "alfalfa")
