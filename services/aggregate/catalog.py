"""The registry as aggregate needs it: the shared read model (contests in choice order, which TPS exist)."""

from suara.registry.catalog import RegistryView as Catalog

__all__ = ["Catalog"]
