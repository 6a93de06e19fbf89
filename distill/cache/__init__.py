"""The teacher cache: sharded safetensors of teacher top-k logprobs, addressed by content.

Public API (stable, used in notebooks):

    from distill.cache import open_cache, CacheWriter, CacheSpec, Record

`format` defines the layout, `codec` packs arrays, `writer` writes, `reader` reads, `views`
stores the filter's selections, `admin` lists and cleans caches under the cache root.
"""

from distill.cache.format import FORMAT_VERSION, CacheSpec, Record
from distill.cache.reader import TeacherCache, open_cache
from distill.cache.views import list_views, load_view, view_indices, write_view
from distill.cache.writer import CacheWriter

__all__ = [
    "FORMAT_VERSION",
    "CacheSpec",
    "CacheWriter",
    "Record",
    "TeacherCache",
    "list_views",
    "load_view",
    "open_cache",
    "view_indices",
    "write_view",
]
