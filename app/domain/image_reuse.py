"""Reuse of image work across certificates rendered in one process.

Every certificate of a kind carries the same seal image, and xhtml2pdf 0.2.28
and reportlab 5.1 redo all the work on it for each document. xhtml2pdf
decodes the pixels twice to check that they can be decoded. reportlab
converts and compresses them again, because it reuses an encoded image only
within one document. On a 2-core VM the encoding took about 15 ms CPU of a
64 ms render, and the decode checks about 8 ms of the 47 ms left after that
(interleaved runs of render_pdf, CPU-time medians). Neither
library caches across documents, so `install_image_reuse` replaces both
steps with versions keyed by the image's bytes.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict

from reportlab.pdfbase import pdfdoc
from xhtml2pdf.xhtml2pdf_reportlab import PmlImageReader

ENCODED_IMAGE_CACHE_SIZE = 16  # encoded images kept: seals, and the last few QR codes
DECODED_IMAGE_CACHE_SIZE = 256  # digests of image bytes known to decode

_REPORTLAB_IMAGE_XOBJECT = pdfdoc.PDFImageXObject
_XHTML2PDF_DECODE = PmlImageReader._decode

_lock = threading.Lock()
_decoded: OrderedDict[bytes, None] = OrderedDict()


class ReusedImageXObject(_REPORTLAB_IMAGE_XOBJECT):
    """reportlab's image XObject, encoded once per process for each image that xhtml2pdf reads from bytes.

    canvas.drawImage names such an image after the MD5 of its bytes
    (PmlImageReader.__str__), so an equal name and mask mean equal pixels,
    and the compressed streams of the first encoding serve every later
    document. Images from other sources are encoded as before.
    """

    _encoded: OrderedDict[tuple[str, str], tuple[dict, dict | None]] = OrderedDict()

    def __init__(self, name, source=None, mask=None) -> None:
        content_named = isinstance(source, PmlImageReader) and isinstance(source.fileName, io.BytesIO)
        key = (name, repr(mask))
        if content_named:
            with _lock:
                encoded = self._encoded.get(key)
                if encoded is not None:
                    self._encoded.move_to_end(key)
            if encoded is not None:
                self._restore(*encoded)
                return
        super().__init__(name, source, mask)
        if content_named:
            self._remember(key)

    def _remember(self, key: tuple[str, str]) -> None:
        fields = {name: value for name, value in vars(self).items() if name != "_smask"}
        smask = getattr(self, "_smask", None)
        smask_fields = dict(vars(smask)) if smask is not None else None
        with _lock:
            self._encoded[key] = (fields, smask_fields)
            while len(self._encoded) > ENCODED_IMAGE_CACHE_SIZE:
                self._encoded.popitem(last=False)

    def _restore(self, fields: dict, smask_fields: dict | None) -> None:
        # Fresh objects with the stored attributes, because canvas.drawImage
        # sets references on them that belong to one document. The streams
        # are immutable bytes and are shared.
        vars(self).update(fields)
        if smask_fields is not None:
            smask = _REPORTLAB_IMAGE_XOBJECT.__new__(_REPORTLAB_IMAGE_XOBJECT)
            vars(smask).update(smask_fields)
            self._smask = smask


def _decode_unless_known(reader: PmlImageReader, where: str) -> None:
    """Run xhtml2pdf's decode check on image bytes this process has not decoded before.

    The check raises ImageWarning for a truncated or corrupt image, and
    equal bytes decode equally, so it only needs to run once for them.
    Pixels that are needed later are still decoded then, by Pillow.
    """
    stream = reader.fp
    if not isinstance(stream, io.BytesIO):
        _XHTML2PDF_DECODE(reader, where)
        return
    digest = hashlib.md5(stream.getvalue()).digest()
    with _lock:
        if digest in _decoded:
            _decoded.move_to_end(digest)
            return
    _XHTML2PDF_DECODE(reader, where)
    with _lock:
        _decoded[digest] = None
        while len(_decoded) > DECODED_IMAGE_CACHE_SIZE:
            _decoded.popitem(last=False)


def install_image_reuse() -> None:
    """Make reportlab and xhtml2pdf reuse image work across documents, for the whole process."""
    # canvas.drawImage looks the class up in pdfdoc on each call.
    pdfdoc.PDFImageXObject = ReusedImageXObject
    PmlImageReader._decode = _decode_unless_known
