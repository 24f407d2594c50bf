# Helpers of the data rules (workflow/rules/data.smk) and the CelebA run
# (workflow/rules/celeba.smk): file lists, download options, dataset locations. No rules here.
import shlex

# The files of each source (mtl_paradigms.data.sources, kept equal by tests/data).
DOWNLOAD_FILES = {
    "nyuv2": ["nyuv2.zip"],
    "cityscapes": ["cityscapes.zip"],
    "celeba": [
        "img_align_celeba.zip",
        "list_attr_celeba.txt",
        "list_eval_partition.txt",
    ],
    "mnist": [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ],
}
WEIGHT_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
}
# torchvision's weight mechanism caches under $TORCH_HOME/hub/checkpoints: training jobs get
# TORCH_HOME=<data.dir>/torch, where rule download_weights puts the files.
TORCH_HOME = f"{DATA}/torch"


def download_files(src):
    return [f"{DATA}/downloads/{src}/{name}" for name in DOWNLOAD_FILES[src]]


def download_args(src, name):
    """`mtlp download` options from config `data`: record, retries, mirrors, local copy."""
    data = config["data"]
    key = f"{src}/{name}"
    args = [
        f"--record {shlex.quote(f'{DATA}/checksums.json')}",
        f"--retries {data['retries']} --backoff {data['backoff']} --timeout {data['timeout']}",
    ]
    if key in data["local"]:
        args.append(f"--local {shlex.quote(data['local'][key])}")
    args += [f"--url {shlex.quote(url)}" for url in data["mirrors"].get(key, [])]
    if key in data["checksums"]:
        known = data["checksums"][key]
        args.append(f"--md5 {shlex.quote(known.get('md5') or '')}")
        args.append(f"--sha256 {shlex.quote(known.get('sha256') or '')}")
    if not data["builtin_urls"]:
        args.append("--mirrors-only")
    return " ".join(args)


def weights_file(arch):
    return f"{DATA}/torch/hub/checkpoints/{WEIGHT_FILES[arch]}"


def main_weights():
    """The ImageNet weights the main experiment's DeepLabV3 asks for (`pretrained: true`)."""
    main = config["main"]
    archs = {arch for _, arch in main_panels()}
    wanted = "deeplabv3" in archs and (
        main["archs"]
        .get("deeplabv3", {})
        .get("pretrained", main["train"].get("pretrained"))
    )
    return [weights_file("resnet50")] if wanted else []


DATA_SECTION = {"celeba": "celeba", "mnist": "multimnist"}


def raw_dir(name, rawsrc):
    """Folder of the official files: generated, given by `data_dir`, or downloaded."""
    section = config[DATA_SECTION[name]]
    if rawsrc == "synthetic":
        return f"{DATA}/synthetic/{name}"
    return section.get("data_dir") or f"{DATA}/downloads/{name}"


def raw_input(name, rawsrc):
    if rawsrc == "synthetic":
        return [f"{DATA}/synthetic/{name}"]
    return [] if config[DATA_SECTION[name]].get("data_dir") else download_files(name)


celeba_prepared = RUN_SPECS.celeba_prepared


def multimnist_dir():
    return f"{DATA}/prepared/multimnist_{config['multimnist']['source']}"


# Stages without claims; their default targets (common.smk, stage_outputs).
DATA_STAGE_OUTPUTS = {
    "celeba": lambda: table_files("celeba_attributes"),
    "multimnist": lambda: [multimnist_dir()],
}


# ---- the CelebA-style run -----------------------------------------------------------------
def celeba_weights():
    celeba = config["celeba"]
    return [weights_file("resnet18")] if celeba["train"].get("pretrained") else []


def celeba_run_metrics():
    return run_files(RUN_SPECS.celeba(), "metrics.json")
