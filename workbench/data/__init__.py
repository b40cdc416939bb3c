"""The data path: dataset registry, formats → canonical records, chat templates with label masks, loading,
tokenisation, packing, converters and statistics."""
