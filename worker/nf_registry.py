"""NF types the runtime can load, and how it builds one from an ``nf:`` section.

The built-in native NFs live in ``cext/``; ``native`` loads a vendor's Cython
``NativeNF`` subclass and ``python`` a plain Python class (the slow path), both
named by ``class: "package.module:Class"``.
"""

from __future__ import annotations

import importlib

from worker.nf_errors import NFConfigError

NF_TYPES = {
    "empty": "cext.nf_basic:EmptyNF",
    "tunnel": "cext.nf_basic:TunnelNF",
    "ipforward": "cext.nf_ipforward:IpForwardNF",
    "acl": "cext.nf_acl:AclNF",
    "bpf_lpm": "cext.nf_bpf_lpm:BpfLpmNF",
    "urlfilter": "cext.nf_urlfilter:UrlFilterNF",
    "encrypt": "cext.nf_crypto:EncryptNF",
    "decrypt": "cext.nf_crypto:DecryptNF",
    "nat": "cext.nf_nat:NatNF",  # stateful: needs a state: section (docs/state.rst)
    "native": None,
    "python": None,
    # an unmodified program in its own network namespace, behind a bridge process at
    # its chain position (worker.thirdparty, docs/thirdparty.rst); not a NativeNF
    "thirdparty": None,
}


def load_class(path: str, fieldname: str = "nf.class"):
    module, _, attr = path.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise NFConfigError(fieldname, f"cannot import {module!r}: {exc}") from None
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise NFConfigError(fieldname, f"{module!r} has no {attr!r}") from None


def build_nf(spec, base_dir=None):
    """An NF object ready to run: instantiated, ``base_dir`` set, configured.

    Needs the EAL up (NFs build ``rte_lpm``/``rte_acl`` tables in ``configure``).
    """
    from cext.nf import NativeNF, PythonNF

    if spec.type == "thirdparty":
        raise NFConfigError(
            "nf.type", "thirdparty runs behind a bridge at a chain position, not in an NF process"
        )
    if spec.type == "python":
        impl = load_class(spec.cls)()
        if getattr(impl, "stateful", False):  # state API: docs/state.rst
            from cext.state import PythonStatefulNF

            nf = PythonStatefulNF(impl, name=type(impl).__name__)
        else:
            nf = PythonNF(impl, name=type(impl).__name__)
    else:
        cls = load_class(spec.cls if spec.type == "native" else NF_TYPES[spec.type])
        if not (isinstance(cls, type) and issubclass(cls, NativeNF)):
            raise NFConfigError("nf.class", f"{spec.cls!r} is not a cext.nf.NativeNF subclass")
        nf = cls(name=spec.type)
    nf.base_dir = base_dir
    nf.configure(spec.config)
    return nf
