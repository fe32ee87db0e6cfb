"""Study runners reproducing the paper's comparisons (thin layers over rankscope)."""
