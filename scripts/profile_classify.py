"""Groups the symbols of `perf report --stdio --sort symbol` files by kernel kind and prints
one markdown table: a row per kind, a column per file (share of that file's samples).

The rules match on libtorch's kernel symbol names (oneDNN and MKL for convolutions and GEMM,
TensorIterator loops for element-wise ops); first match wins, so the more specific come first.
"""
import re
import sys
from collections import OrderedDict

RULES = [
    ("kernel (page zeroing, faults, memory management)", r"^\[k\]"),
    # oneDNN's JIT-generated kernels have no symbol: perf prints their bare addresses.
    ("conv (oneDNN, MKL GEMM, JIT code)", r"dnnl|mkldnn|jit_|gemm|sgemm|conv|\[unknown\]|mkl_blas|^\[.\] 0x[0-9a-f]+$"),
    ("addcmul (in-place weighted sums)", r"addcmul"),
    ("mul (op weight x op output, its backward products)", r"\bmul|mul_kernel|MulFunctor"),
    ("add (node sums, gradient accumulation, sums of products)", r"\badd|add_kernel|AddFunctor|sum_kernel|inner_sum|outer_sum|reduce"),
    ("copy (strided slices made dense, interleave, cat)", r"copy|cat_|Cat|index|narrow|memcpy|memmove"),
    ("tanh", r"(?i)tanh"),
    ("max-pool", r"max_pool|maxpool|max_pool2d"),
    ("avg-pool", r"avg_pool|avgpool"),
    ("relu / threshold", r"relu|threshold|clamp_min"),
    ("fill / zeros", r"fill|zero_|memset"),
    ("malloc / free", r"malloc|free|_int_|mmap|munmap"),
]


def shares(path):
    """Share (percent) of each symbol line in one perf report file."""
    out = []
    for line in open(path, errors="replace"):
        m = re.match(r"\s*([0-9.]+)%\s+(\[.\])\s+(.*?)\s*(-\s+-\s*)?$", line)
        if m:
            # "[k]": a kernel symbol; kept in the name so the rules can tell them apart.
            out.append((float(m.group(1)), m.group(2) + " " + m.group(3)))
    return out


def classify(symbol):
    for name, pattern in RULES:
        if re.search(pattern, symbol):
            return name
    return "other (dispatch, autograd bookkeeping)"


def main(paths):
    columns = []
    for path in paths:
        groups = OrderedDict((name, 0.0) for name, _ in RULES)
        groups["other (dispatch, autograd bookkeeping)"] = 0.0
        for pct, symbol in shares(path):
            groups[classify(symbol)] += pct
        columns.append(groups)
    names = [p.rsplit("/", 1)[-1].removesuffix(".txt") for p in paths]
    print("| kernel kind (share of samples) | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for kind in columns[0]:
        print(f"| {kind} | " + " | ".join(f"{c[kind]:.1f}%" for c in columns) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: profile_classify.py REPORT.txt [REPORT.txt ...]")
    main(sys.argv[1:])
