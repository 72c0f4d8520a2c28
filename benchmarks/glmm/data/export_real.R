# Export the real data sets of the GLMM benchmark's cases verbagg-1,
# arabidopsis-1, salamanders-1, owls-1 and mmmec-1 (benchmarks/glmm/cases.py)
# from R's packages: the columns the formulas use, dots in names as "_",
# log(BroodSize) and log(expected) as offset columns.  Run once from this
# directory: Rscript export_real.R (R 4.2.2, lme4 1.1.31, mlmRev 1.0.8,
# glmmTMB here).
suppressPackageStartupMessages({library(lme4); library(mlmRev); library(glmmTMB)})
out <- function(d, cols, name) {
  d <- as.data.frame(d)[, cols]
  d <- d[complete.cases(d), ]
  names(d) <- gsub(".", "_", names(d), fixed = TRUE)
  write.csv(d, file.path("real", paste0(name, ".csv")), row.names = FALSE)
}
dir.create("real", showWarnings = FALSE)
out(lme4::VerbAgg, c("r2", "Anger", "Gender", "btype", "situ", "id", "item"), "verbagg")
out(lme4::Arabidopsis, c("total.fruits", "nutrient", "amd", "rack", "status", "popu", "gen"),
    "arabidopsis")
out(glmmTMB::Salamanders, c("count", "spp", "mined", "site"), "salamanders")
out(transform(glmmTMB::Owls, lbs = log(BroodSize)),
    c("SiblingNegotiation", "FoodTreatment", "SexParent", "lbs", "Nest"), "owls")
out(transform(mlmRev::Mmmec, lexp = log(expected)), c("deaths", "uvb", "lexp", "region", "nation"),
    "mmmec")
