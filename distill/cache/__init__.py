"""The teacher cache: sharded safetensors of teacher top-k logprobs, addressed by content.

Public API (stable, used in notebooks):

    from distill.cache import open_cache, CacheWriter, CacheSpec, Record

`format` defines the layout and the typed schemas of index.json and of views, `codec` packs arrays,
`writer` writes, `reader` reads, `views` stores the filter's selections, `admin` lists and cleans
caches under the cache root.
"""

from distill.cache.format import FORMAT_VERSION, CacheIndex, CacheSpec, Record, View
from distill.cache.reader import TeacherCache, open_cache
from distill.cache.views import list_views, load_view, view_indices, write_view
from distill.cache.writer import CacheWriter

__all__ = [
    "FORMAT_VERSION",
    "CacheIndex",
    "CacheSpec",
    "CacheWriter",
    "Record",
    "TeacherCache",
    "View",
    "list_views",
    "load_view",
    "open_cache",
    "view_indices",
    "write_view",
]
