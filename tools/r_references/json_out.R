# JSON output shared by the reference scripts (sourced by each).
#
# jsonlite 1.8.4 writes at most 15 significant digits even with digits = NA,
# which does not round-trip, so numbers are written in the shortest of 15/16/17
# significant digits that reads back to the same double.

num_json <- function(x) {
  if (is.na(x) || !is.finite(x)) return(structure("null", class = "json"))
  if (x == round(x) && abs(x) < 1e15) {
    return(structure(format(x, scientific = FALSE), class = "json"))
  }
  for (k in 15:17) {
    s <- sprintf("%.*g", k, x)
    if (as.numeric(s) == x) break
  }
  structure(s, class = "json")
}
# numbers -> verbatim JSON; a numeric of length != 1 or marked I() -> array;
# a matrix -> list of rows; character I() -> array
prep_json <- function(x) {
  if (is.matrix(x) && is.numeric(x)) {
    return(lapply(seq_len(nrow(x)), function(i) lapply(unname(x[i, ]), num_json)))
  }
  if (is.list(x)) {
    nm <- names(x)
    out <- lapply(x, prep_json)
    names(out) <- nm
    return(out)
  }
  if (is.numeric(x) && !is.integer(x)) {
    if (length(x) == 1 && !inherits(x, "AsIs")) return(num_json(x))
    return(lapply(unname(as.numeric(x)), num_json))
  }
  if (is.integer(x) && (length(x) != 1 || inherits(x, "AsIs"))) return(as.list(unname(x)))
  if (is.character(x) && inherits(x, "AsIs")) return(I(unname(as.character(x))))
  x
}
named_num <- function(v) {
  out <- as.list(unname(as.numeric(v)))
  names(out) <- names(v)
  out
}
