"""Analysis of run directories: tidy loaders and the paper's figures (never imports training code).

    analysis.load        run directories (any depth) → runs / metrics / positions DataFrames
    analysis.efficiency  steps / examples to threshold (censored runs), per-position learning order
    analysis.overview    where each run stands (status, steps, accuracy, speed); `probes runs`
    analysis.plots       curves, heatmaps, efficiency and learning-order figures, one module per
                         family (probe / VLM variants by table); `probes plot`
"""
