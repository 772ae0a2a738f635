"""Installs the ltsei package exported from nbs/ (metadata in settings.ini, as nbdev 2 expects)."""
from configparser import ConfigParser
from setuptools import find_packages, setup

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini")
cfg = cfg["DEFAULT"]
setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    author=cfg["author"],
    license=cfg["license"],
    python_requires=">=" + cfg["min_python"],
    packages=find_packages(include=["ltsei", "ltsei.*"]) + ["ltsei.assets"],   # assets: data files only
    include_package_data=True,
    package_data={"ltsei.assets": ["*.json"]},   # the real ADS-B reference numbers (06_realism)
    install_requires=cfg["requirements"].split(),
    extras_require={"ray": ["ray>=2.9"], "slurm": ["submitit>=1.5"], "tensorboard": ["tensorboard>=2.14"]},
    entry_points={"console_scripts": cfg["console_scripts"].split()},
)
