# Reference values from R (pROC, psych, stats) for tests/evaluation/test_r_reference.py.
# Regenerate with: Rscript tests/evaluation/data/r_reference.R > tests/evaluation/data/r_reference.json
# Needs the Debian packages r-cran-proc and r-cran-psych. Uses pROC's own aSAH data,
# and checks that asah.csv beside this script holds the same rows.
suppressPackageStartupMessages({ library(pROC); library(psych) })
data(aSAH)
here <- dirname(sub("--file=", "", grep("--file=", commandArgs(FALSE), value = TRUE)))
csv <- read.csv(file.path(here, "asah.csv"))
stopifnot(all(csv$outcome == as.character(aSAH$outcome)), all.equal(csv$s100b, aSAH$s100b),
          all.equal(csv$ndka, aSAH$ndka), all(csv$wfns == as.integer(as.character(aSAH$wfns))),
          all(csv$age == aSAH$age))

num <- function(x) if (is.na(x)) "null" else sprintf("%.15g", x)
vec <- function(x) paste0("[", paste(sapply(x, num), collapse = ", "), "]")
obj <- function(...) {
  kv <- list(...)
  paste0("{", paste(sprintf('"%s": %s', names(kv), unlist(kv)), collapse = ", "), "}")
}

markers <- c("s100b", "ndka", "wfns", "age")
rocs <- lapply(markers, function(m) roc(aSAH$outcome, as.numeric(aSAH[[m]]), levels = c("Good", "Poor"),
                                        direction = "<", quiet = TRUE))
names(rocs) <- markers
auc_part <- sapply(markers, function(m) {
  r <- rocs[[m]]
  sprintf('"%s": %s', m, obj(auc = num(as.numeric(auc(r))), var = num(var(r, method = "delong")),
                             ci = vec(as.numeric(ci.auc(r, method = "delong"))[c(1, 3)])))
})
youden_part <- sapply(c("s100b", "ndka", "wfns"), function(m) {
  b <- coords(rocs[[m]], "best", best.method = "youden", ret = c("threshold", "specificity", "sensitivity"),
              transpose = FALSE)
  sprintf('"%s": %s', m, obj(threshold = num(b$threshold[1]), specificity = num(b$specificity[1]),
                             sensitivity = num(b$sensitivity[1])))
})
pairs <- list(c("s100b", "wfns"), c("s100b", "ndka"), c("ndka", "wfns"), c("wfns", "age"))
paired_part <- sapply(pairs, function(p) {
  t <- roc.test(rocs[[p[1]]], rocs[[p[2]]], method = "delong", paired = TRUE)
  sprintf('"%s-%s": %s', p[1], p[2], obj(z = num(t$statistic), p = num(t$p.value),
                                         ci = vec(as.numeric(t$conf.int)),
                                         cov = num(cov(rocs[[p[1]]], rocs[[p[2]]], method = "delong"))))
})
male <- aSAH$gender == "Male"
rm_ <- roc(aSAH$outcome[male], aSAH$s100b[male], levels = c("Good", "Poor"), direction = "<", quiet = TRUE)
rf_ <- roc(aSAH$outcome[!male], aSAH$s100b[!male], levels = c("Good", "Poor"), direction = "<", quiet = TRUE)
u <- roc.test(rm_, rf_, method = "delong", paired = FALSE)
unpaired_part <- obj(auc_male = num(as.numeric(auc(rm_))), auc_female = num(as.numeric(auc(rf_))),
                     d = num(u$statistic), p = num(u$p.value))

sf <- matrix(c(9, 2, 5, 8, 6, 1, 3, 2, 8, 4, 6, 8, 7, 1, 2, 6, 10, 5, 6, 9, 6, 2, 4, 7), ncol = 4, byrow = TRUE)
icc <- ICC(sf, lmer = FALSE)$results
icc_part <- sapply(seq_len(nrow(icc)), function(i) {
  sprintf('"%s": %s', icc$type[i], obj(icc = num(icc$ICC[i]), ci = vec(c(icc$`lower bound`[i], icc$`upper bound`[i]))))
})

tab <- matrix(c(30, 12, 4, 54), 2, byrow = TRUE)
mc <- mcnemar.test(tab, correct = TRUE)
mc0 <- mcnemar.test(tab, correct = FALSE)
pp <- power.prop.test(p1 = 0.85, p2 = 0.75, sig.level = 0.05, power = 0.8)

cat("{\n")
cat(sprintf('  "proc_version": "%s",\n', as.character(packageVersion("pROC"))))
cat(sprintf('  "psych_version": "%s",\n', as.character(packageVersion("psych"))))
cat(sprintf('  "auc": {%s},\n', paste(auc_part, collapse = ", ")))
cat(sprintf('  "youden": {%s},\n', paste(youden_part, collapse = ", ")))
cat(sprintf('  "paired": {%s},\n', paste(paired_part, collapse = ", ")))
cat(sprintf('  "unpaired_s100b_male_vs_female": %s,\n', unpaired_part))
cat(sprintf('  "icc_shrout_fleiss": {%s},\n', paste(icc_part, collapse = ", ")))
cat(sprintf('  "mcnemar_30_12_4_54": %s,\n', obj(chi2_corrected = num(mc$statistic), p_corrected = num(mc$p.value),
                                                 chi2 = num(mc0$statistic), p = num(mc0$p.value))))
cat(sprintf('  "power_prop_test_85_75": %s\n', obj(n = num(pp$n))))
cat("}\n")
