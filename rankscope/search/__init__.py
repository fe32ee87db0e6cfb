"""Architecture search (MSR-DARTS and the DARTS baseline) on the shared training loop."""
