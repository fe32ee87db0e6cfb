"""``rankscope audit``: operator-exact per-layer spectra and stable ranks of any checkpoint.

Public API::

    from rankscope.audit import audit_checkpoint, audit_module, compare
    result = audit_checkpoint("model.pt", input_size=32)   # or audit_module(net, (3, 32, 32))
    result.table          # pandas DataFrame, one row per conv/linear layer
    result.summary_line() # one line per network

Column definitions and the difference to WeightWatcher: docs/audit.md.
"""
from rankscope.audit.api import audit_checkpoint, audit_layers, audit_module, save_spectra
from rankscope.audit.layers import LayerSpec, discover_module_layers, layers_from_state_dict
from rankscope.audit.loading import LoadedSource, load_source
from rankscope.audit.report import AuditResult, compare, format_table

__all__ = [
    "audit_checkpoint", "audit_module", "audit_layers", "compare", "save_spectra", "AuditResult",
    "LayerSpec", "discover_module_layers", "layers_from_state_dict", "load_source", "LoadedSource",
    "format_table",
]
