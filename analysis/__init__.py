"""Analysis of run directories: tidy loaders and the paper's figures (never imports training code)."""
