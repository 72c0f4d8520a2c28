# Export real data sets (simple column names, complete cases) to data/ beside this file.
# Rscript benchmarks/sweep/export.R   (run from the repository root)
suppressPackageStartupMessages({library(lme4); library(nlme); library(mlmRev); library(MASS); library(AER); library(carData); library(lmerTest)})
dir.create("benchmarks/sweep/data", showWarnings = FALSE); setwd("benchmarks/sweep/data")
out <- function(d, name) {
  d <- as.data.frame(d)
  for (c in names(d)) if (is.factor(d[[c]])) d[[c]] <- as.character(d[[c]])
  d <- d[complete.cases(d), , drop = FALSE]
  write.csv(d, paste0(name, ".csv"), row.names = FALSE)
  cat(name, nrow(d), "\n")
}
out(data.frame(Yield = lme4::Dyestuff$Yield, Batch = lme4::Dyestuff$Batch), "dyestuff")
out(data.frame(effort = nlme::ergoStool$effort, Type = nlme::ergoStool$Type, Subject = nlme::ergoStool$Subject), "ergo")
ck <- lme4::cake
out(data.frame(angle = ck$angle, recipe = ck$recipe, temperature = paste0("T", ck$temp),
               replicate = ck$replicate, reprec = paste(ck$replicate, ck$recipe, sep = "_")), "cake")
a <- nlme::Assay
out(data.frame(logDens = a$logDens, sample = a$sample, dilut = paste0("d", a$dilut), Block = a$Block,
               bs = paste(a$Block, a$sample, sep = "_"), bd = paste(a$Block, a$dilut, sep = "_")), "assay")
dz <- nlme::Dialyzer
out(data.frame(rate = dz$rate, pressure = dz$pressure, pressure2 = dz$pressure^2, QB = paste0("Q", dz$QB), Subject = dz$Subject), "dialyzer")
out(data.frame(conc = nlme::IGF$conc, age = nlme::IGF$age, Lot = nlme::IGF$Lot), "igf")
data("Grunfeld", package = "AER"); g <- Grunfeld
out(data.frame(invest = g$invest, value = g$value / 1000, capital = g$capital / 1000, firm = g$firm, year = g$year), "grunfeld")
out(data.frame(protein = nlme::Milk$protein, Time = nlme::Milk$Time, Diet = nlme::Milk$Diet, Cow = nlme::Milk$Cow), "milk")
s <- nlme::Spruce
out(data.frame(logSize = s$logSize, d = s$days / 100, Tree = s$Tree, plot = s$plot), "spruce")
b <- carData::Blackmore
out(data.frame(lex = log2(b$exercise + 5/60), age8 = b$age - 8, group = b$group,
               age8grp = (b$age - 8) * (b$group == "patient"), subject = b$subject), "blackmore")
n <- MASS::nlschools
out(data.frame(lang = n$lang, IQ = n$IQ - mean(n$IQ), SES = n$SES - mean(n$SES), COMB = paste0("C", n$COMB), class = n$class), "nlschools")
cr <- lmerTest::carrots
out(data.frame(Preference = cr$Preference, sens2 = cr$sens2, Homesize = paste0("H", cr$Homesize),
               Consumer = cr$Consumer, Product = cr$Product), "carrots")
gc <- mlmRev::Gcsemv
out(data.frame(course = gc$course, male = as.numeric(gc$gender == "M"), school = gc$school), "gcsemv")
data("PSID7682", package = "AER"); p <- PSID7682
out(data.frame(lwage = log(p$wage), exper = p$experience / 10, exper2 = (p$experience / 10)^2, education = p$education,
               gender = p$gender, id = p$id, year = p$year), "psid")
data("Municipalities", package = "AER"); m <- Municipalities
out(data.frame(expend = m$expenditures * 100, revenue = m$revenues * 100, grants = m$grants * 100,
               municipality = m$municipality, year = m$year), "municipalities")
data("Guns", package = "AER"); gu <- Guns
yr <- as.numeric(as.character(gu$year))
out(data.frame(lviolent = log(gu$violent), law = gu$law, lprisoners = log(gu$prisoners), t = (yr - 1977) / 10,
               state = gu$state, year = gu$year), "guns")
v <- carData::Vocab
out(data.frame(vocabulary = v$vocabulary, educ = v$education - 13, sex = v$sex, year = v$year), "vocab")
gv <- carData::GSSvocab
out(data.frame(vocab = gv$vocab, educ = gv$educ - 13, age = (gv$age - 45) / 10, gender = gv$gender,
               nativeBorn = gv$nativeBorn, year = gv$year, ageGroup = gv$ageGroup), "gssvocab")
data("CPSSW8", package = "AER"); c8 <- CPSSW8
out(data.frame(learn = log(c8$earnings), education = c8$education - 13, gender = c8$gender, age = c8$age, region = c8$region), "cpssw8")
data("Fertility", package = "AER"); f <- Fertility
out(data.frame(work = f$work, morekids = as.numeric(f$morekids == "yes"), boy1 = as.numeric(f$gender1 == "male"),
               boy2 = as.numeric(f$gender2 == "male"), afam = f$afam, hispanic = f$hispanic, other = f$other, age = f$age), "fertility")
# --- second batch ---
sb <- nlme::Soybean
out(data.frame(lweight = log(sb$weight), t = (sb$Time - 50) / 10, t2 = ((sb$Time - 50) / 10)^2, Variety = sb$Variety, Year = paste0("Y", sb$Year), Plot = sb$Plot), "soybean")
w <- nlme::Wheat2
out(data.frame(yield = w$yield, variety = w$variety, Block = w$Block), "wheat2")
data("CPS1988", package = "AER"); c88 <- CPS1988
out(data.frame(lwage = log(c88$wage), education = c88$education - 12, ethnicity = c88$ethnicity, smsa = c88$smsa,
               parttime = c88$parttime, region = c88$region, experience = c88$experience), "cps1988")
so <- mlmRev::Socatt
out(data.frame(numpos = as.numeric(as.character(so$numpos)), year = paste0("Y", so$year), party = so$party, class = so$class,
               gender = so$gender, age = (so$age - 50) / 10, district = so$district, respond = so$respond), "socatt")
