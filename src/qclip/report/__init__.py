"""The study's report: results table, the paper's comparisons measured on this run, plots, Markdown + HTML."""
