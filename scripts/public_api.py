"""The public API of a crate as sorted text lines, from rustdoc's JSON output.

usage: public_api.py CRATE.json > public-api.txt

One line per public item reachable from the crate root (through modules and
re-exports), with its full path and signature: modules, structs and their
public fields, enums and variants, functions and methods, traits and their
items, the traits each type implements (auto traits included, blanket impls
left out), constants, statics, type aliases and macros. Types are named by
their canonical path, so a refactor that only moves an import changes no line;
a change of a signature, a removed item or a lost `Send` does.

Read by scripts/public-api.sh, which diffs the result against the snapshot
checked in beside each library crate.
"""

import json
import sys


# Auto traits that only exist on some toolchains: listing them would make the
# snapshot depend on the compiler rather than on our code.
UNSTABLE_AUTO_TRAITS = {"Freeze", "UnsafeUnpin"}


class Api:
    def __init__(self, doc):
        self.doc = doc
        self.index = doc["index"]
        self.paths = doc["paths"]
        self.lines = set()

    # ---------------------------------------------------------------- types

    def path_of(self, path):
        """A resolved path: its canonical name, with its generic arguments."""
        known = self.paths.get(str(path.get("id")))
        name = "::".join(known["path"]) if known else path["path"]
        return name + self.args(path.get("args"))

    def args(self, args):
        if not args:
            return ""
        if "angle_bracketed" in args:
            ab = args["angle_bracketed"]
            parts = [self.generic_arg(a) for a in ab["args"]]
            parts += [self.constraint(c) for c in ab.get("constraints", [])]
            return f"<{', '.join(parts)}>" if parts else ""
        if "parenthesized" in args:
            p = args["parenthesized"]
            out = f"({', '.join(self.ty(t) for t in p['inputs'])})"
            return out + (f" -> {self.ty(p['output'])}" if p.get("output") else "")
        return "<..>"

    def generic_arg(self, a):
        if "lifetime" in a:
            return a["lifetime"]
        if "type" in a:
            return self.ty(a["type"])
        if "const" in a:
            return a["const"].get("expr", "_")
        return "_"

    def constraint(self, c):
        binding = c.get("binding", {})
        if "equality" in binding:
            eq = binding["equality"]
            value = self.ty(eq["type"]) if "type" in eq else str(eq.get("constant"))
            return f"{c['name']} = {value}"
        return f"{c['name']}: {self.bounds(binding.get('constraint', []))}"

    def bounds(self, bounds):
        out = []
        for b in bounds:
            if "trait_bound" in b:
                tb = b["trait_bound"]
                modifier = {"maybe": "?", "maybe_const": "~const "}.get(tb.get("modifier"), "")
                out.append(modifier + self.hrtb(tb.get("generic_params")) + self.path_of(tb["trait"]))
            elif "outlives" in b:
                out.append(b["outlives"])
            elif "use" in b:
                out.append("use<..>")
        return " + ".join(out)

    def hrtb(self, params):
        names = [p["name"] for p in params or []]
        return f"for<{', '.join(names)}> " if names else ""

    def ty(self, t):
        if t is None:
            return "()"
        kind, v = next(iter(t.items()))
        if kind == "resolved_path":
            return self.path_of(v)
        if kind in ("generic", "primitive"):
            return v
        if kind == "borrowed_ref":
            lt = f"{v['lifetime']} " if v.get("lifetime") else ""
            return f"&{lt}{'mut ' if v['is_mutable'] else ''}{self.ty(v['type'])}"
        if kind == "raw_pointer":
            return f"*{'mut' if v['is_mutable'] else 'const'} {self.ty(v['type'])}"
        if kind == "tuple":
            inner = ", ".join(self.ty(x) for x in v)
            return f"({inner},)" if len(v) == 1 else f"({inner})"
        if kind == "slice":
            return f"[{self.ty(v)}]"
        if kind == "array":
            return f"[{self.ty(v['type'])}; {v['len']}]"
        if kind == "impl_trait":
            return f"impl {self.bounds(v)}"
        if kind == "dyn_trait":
            traits = [self.hrtb(p.get("generic_params")) + self.path_of(p["trait"]) for p in v["traits"]]
            if v.get("lifetime"):
                traits.append(v["lifetime"])
            return f"dyn {' + '.join(traits)}"
        if kind == "qualified_path":
            trait = self.path_of(v["trait"]) if v.get("trait") else "_"
            return f"<{self.ty(v['self_type'])} as {trait}>::{v['name']}"
        if kind == "function_pointer":
            return "fn" + self.sig(v["sig"])
        if kind == "infer":
            return "_"
        return f"<{kind}>"

    # ------------------------------------------------------------- generics

    def generics(self, g):
        params = []
        for p in g.get("params", []):
            kind, v = next(iter(p["kind"].items()))
            if kind == "lifetime":
                outlives = " + ".join(v.get("outlives", []))
                params.append(p["name"] + (f": {outlives}" if outlives else ""))
            elif kind == "type":
                if v.get("is_synthetic"):
                    continue
                b = self.bounds(v.get("bounds", []))
                params.append(p["name"] + (f": {b}" if b else ""))
            elif kind == "const":
                params.append(f"const {p['name']}: {self.ty(v['type'])}")
        return f"<{', '.join(params)}>" if params else ""

    def where(self, g):
        preds = []
        for w in g.get("where_predicates", []):
            if "bound_predicate" in w:
                bp = w["bound_predicate"]
                preds.append(f"{self.hrtb(bp.get('generic_params'))}{self.ty(bp['type'])}: {self.bounds(bp['bounds'])}")
            elif "lifetime_predicate" in w:
                lp = w["lifetime_predicate"]
                preds.append(f"{lp['lifetime']}: {' + '.join(lp['outlives'])}")
            elif "eq_predicate" in w:
                ep = w["eq_predicate"]
                preds.append(f"{self.ty(ep['lhs'])} = {self.ty(ep['rhs'].get('type'))}")
        return f" where {', '.join(preds)}" if preds else ""

    def sig(self, sig):
        inputs = ", ".join(f"{name}: {self.ty(t)}" for name, t in sig["inputs"])
        out = sig.get("output")
        return f"({inputs})" + (f" -> {self.ty(out)}" if out else "")

    # ---------------------------------------------------------------- items

    def emit(self, line):
        self.lines.add(line)

    def attrs(self, item):
        text = json.dumps(item.get("attrs", []))
        return "#[non_exhaustive] " if "non_exhaustive" in text else ""

    def function(self, prefix, name, f):
        h = f["header"]
        quals = "".join(q + " " for q in ("const", "async", "unsafe") if h.get(f"is_{q}"))
        g = f["generics"]
        return f"{prefix}{quals}fn {name}{self.generics(g)}{self.sig(f['sig'])}{self.where(g)}"

    def walk(self, item_id, path, stack):
        item = self.index.get(str(item_id))
        if item is None:
            # Re-exported from another crate: its own API, named here.
            known = self.paths.get(str(item_id))
            target = "::".join(known["path"]) if known else "?"
            self.emit(f"pub use {path} = {target}")
            return
        kind, v = next(iter(item["inner"].items()))
        attrs = self.attrs(item)
        if kind == "module":
            self.emit(f"pub mod {path}")
            if item_id in stack:
                return
            for child in v["items"]:
                self.child(child, path, stack | {item_id})
        elif kind == "use":
            if v.get("id") is None:
                self.emit(f"pub use {path} = {v['source']}")
            elif v["is_glob"]:
                target = self.index.get(str(v["id"]))
                if target and "module" in target["inner"] and v["id"] not in stack:
                    parent = path.rsplit("::", 1)[0]
                    for child in target["inner"]["module"]["items"]:
                        self.child(child, parent, stack | {v["id"]})
                else:
                    self.emit(f"pub use {path}::* = {v['source']}")
            else:
                parent = path.rsplit("::", 1)[0]
                self.walk(v["id"], f"{parent}::{v['name']}", stack)
        elif kind == "struct":
            self.emit(f"{attrs}pub struct {path}{self.generics(v['generics'])}{self.where(v['generics'])}")
            sk, sv = next(iter(v["kind"].items())) if isinstance(v["kind"], dict) else (v["kind"], None)
            if sk == "plain":
                for fid in sv["fields"]:
                    field = self.index[str(fid)]
                    self.emit(f"pub field {path}::{field['name']}: {self.ty(field['inner']['struct_field'])}")
            elif sk == "tuple":
                for i, fid in enumerate(sv):
                    if fid is not None:
                        self.emit(f"pub field {path}::{i}: {self.ty(self.index[str(fid)]['inner']['struct_field'])}")
            self.impls(path, v["impls"])
        elif kind == "enum":
            self.emit(f"{attrs}pub enum {path}{self.generics(v['generics'])}{self.where(v['generics'])}")
            for vid in v["variants"]:
                variant = self.index[str(vid)]
                vk, vv = next(iter(variant["inner"]["variant"]["kind"].items())) if isinstance(variant["inner"]["variant"]["kind"], dict) else ("plain", None)
                vpath = f"{path}::{variant['name']}"
                if vk == "tuple":
                    types = [self.ty(self.index[str(f)]["inner"]["struct_field"]) if f is not None else "_" for f in vv]
                    self.emit(f"pub variant {vpath}({', '.join(types)})")
                elif vk == "struct":
                    fields = [self.index[str(f)] for f in vv["fields"]]
                    body = ", ".join(f"{f['name']}: {self.ty(f['inner']['struct_field'])}" for f in fields)
                    self.emit(f"{self.attrs(variant)}pub variant {vpath} {{ {body} }}")
                else:
                    self.emit(f"pub variant {vpath}")
            self.impls(path, v["impls"])
        elif kind == "union":
            self.emit(f"pub union {path}{self.generics(v['generics'])}")
            self.impls(path, v["impls"])
        elif kind == "function":
            self.emit(self.function("pub ", path, v))
        elif kind == "trait":
            unsafe = "unsafe " if v.get("is_unsafe") else ""
            sup = self.bounds(v.get("bounds", []))
            self.emit(f"pub {unsafe}trait {path}{self.generics(v['generics'])}{': ' + sup if sup else ''}{self.where(v['generics'])}")
            for iid in v["items"]:
                self.assoc(f"{path}", self.index[str(iid)], in_trait=True)
        elif kind == "type_alias":
            self.emit(f"pub type {path}{self.generics(v['generics'])} = {self.ty(v['type'])}")
        elif kind == "constant":
            self.emit(f"pub const {path}: {self.ty(v['type'])}")
        elif kind == "static":
            self.emit(f"pub static {'mut ' if v.get('is_mutable') else ''}{path}: {self.ty(v['type'])}")
        elif kind in ("macro", "proc_macro"):
            self.emit(f"pub macro {path}")
        else:
            self.emit(f"pub {kind} {path}")

    def child(self, child_id, parent, stack):
        item = self.index.get(str(child_id))
        if item is None or item.get("visibility") != "public" and "use" not in item["inner"]:
            return
        if "use" in item["inner"]:
            if item.get("visibility") != "public":
                return
            self.walk(child_id, f"{parent}::{item['inner']['use']['name']}", stack)
        else:
            self.walk(child_id, f"{parent}::{item['name']}", stack)

    def assoc(self, owner, item, in_trait=False):
        kind, v = next(iter(item["inner"].items()))
        if not in_trait and item.get("visibility") != "public":
            return
        name = f"{owner}::{item['name']}"
        if kind == "function":
            self.emit(self.function("pub ", name, v))
        elif kind == "assoc_const":
            self.emit(f"pub const {name}: {self.ty(v['type'])}")
        elif kind == "assoc_type":
            b = self.bounds(v.get("bounds", []))
            self.emit(f"pub type {name}{': ' + b if b else ''}")
        elif kind == "constant":
            self.emit(f"pub const {name}: {self.ty(v['type'])}")

    def impls(self, path, impl_ids):
        for iid in impl_ids:
            impl = self.index[str(iid)]["inner"]["impl"]
            if impl.get("blanket_impl") is not None:
                continue
            g = impl["generics"]
            if impl.get("trait") is None:
                for mid in impl["items"]:
                    self.assoc(path, self.index[str(mid)])
                continue
            if impl["trait"]["path"] in UNSTABLE_AUTO_TRAITS:
                continue
            neg = "!" if impl.get("is_negative") else ""
            self.emit(f"impl{self.generics(g)} {neg}{self.path_of(impl['trait'])} for {self.ty(impl['for'])}{self.where(g)}")


def main():
    for name in sys.argv[1:]:
        with open(name) as f:
            doc = json.load(f)
        api = Api(doc)
        root = doc["index"][str(doc["root"])]
        api.walk(doc["root"], root["name"], frozenset())
        for line in sorted(api.lines):
            print(line)


if __name__ == "__main__":
    main()
