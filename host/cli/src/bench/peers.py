# Peers for `gantry bench kernels`, run by the gantry binary in the same session:
# NumPy's matmul (OpenBLAS in PyPI wheels) for f32 GEMM, and a PyTorch CPU training step of the
# same MLP; with "bf16", PyTorch's bf16 matmul (oneDNN) and the step under bf16 autocast too.
# Prints one JSON object; a peer that cannot run is null with a note saying why.
import json, os, statistics, sys, time

args = json.loads(sys.argv[1])
threads = args["threads"]
device = args.get("device", "cpu")
out = {
    "numpy": None,
    "torch": None,
    "gemm": {},
    "train_step_ms": None,
    "gemm_bf16": {},
    "train_step_bf16_ms": None,
    "notes": [],
}


def median_time(fn, reps, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


try:
    if device != "cpu":
        raise ImportError("NumPy is the CPU peer only")
    import numpy as np

    out["numpy"] = np.__version__
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        out["numpy"] += " (" + str(blas.get("name", "?")) + " " + str(blas.get("version", "")) + ")"
    except Exception:
        pass
    rng = np.random.default_rng(0)
    for n, reps in args["gemm"]:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        c = np.empty((n, n), dtype=np.float32)
        t = median_time(lambda: np.matmul(a, b, out=c), reps, 2)
        out["gemm"][str(n)] = 2.0 * n**3 / t / 1e9
except ImportError as e:
    if device == "cpu":
        out["notes"].append("NumPy is not installed for " + sys.executable + ": " + str(e))

try:
    import torch

    torch.set_num_threads(threads)
    out["torch"] = torch.__version__
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ImportError("PyTorch sees no CUDA device")
        dev = torch.device("cuda")
        sync = torch.cuda.synchronize
        n = args["gpu_n"]
        a32 = torch.randn(n, n, device=dev)
        b32 = torch.randn(n, n, device=dev)
        for name, a, b, tf32 in [
            ("bf16", a32.bfloat16(), b32.bfloat16(), False),
            ("tf32", a32, b32, True),
            ("f32", a32, b32, False),
        ]:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            def mm():
                torch.matmul(a, b)
            for _ in range(3):
                mm()
            sync()
            t = time.perf_counter()
            for _ in range(20):
                mm()
            sync()
            out["gemm"][name] = 2.0 * n**3 * 20 / (time.perf_counter() - t) / 1e12
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        dev = torch.device("cpu")
        sync = lambda: None
    s = args["step"]
    sizes, batch, reps = s["sizes"], s["batch"], s["reps"]
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i + 2 < len(sizes):
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(dev)
    # The fastest Adam PyTorch offers on this CPU (fused where supported), so the ratio is
    # against PyTorch at its best.
    # Optimizer built after the model is on its device (fused Adam needs that).
    try:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        out["torch"] += " (fused Adam)"
    except Exception:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        out["torch"] += " (foreach Adam)"
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.rand(batch, sizes[0], device=dev)
    y = torch.randint(0, sizes[-1], (batch,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        # Gantry's step returns its loss to the host, which waits for the step: so does this.
        loss.item()

    out["train_step_ms"] = 1e3 * median_time(step, reps, 5)
    if device == "cpu" and args.get("bf16"):
        # bf16 GEMM inputs, f32 parameters and Adam: the same split as Gantry's bf16 path.
        def bf16_step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            loss.item()

        out["train_step_bf16_ms"] = 1e3 * median_time(bf16_step, reps, 5)
        for n, r in args["gemm"]:
            a = torch.randn(n, n).bfloat16()
            b = torch.randn(n, n).bfloat16()
            t = median_time(lambda: torch.mm(a, b), r, 2)
            out["gemm_bf16"][str(n)] = 2.0 * n**3 / t / 1e9
except ImportError as e:
    out["notes"].append("PyTorch is not installed for " + sys.executable + ": " + str(e))

print(json.dumps(out))
