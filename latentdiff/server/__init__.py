"""`latentdiff serve`: a warm model behind A1111's `/sdapi/v1` API and a page of our own."""
