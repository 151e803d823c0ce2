"""Maps the folder watchdog/ to the import name `distill_watchdog`.

The import name `watchdog` belongs to the file-system library that Evidently depends on; a
package of ours under that name would overwrite it in site-packages.
"""

from setuptools import find_packages, setup

ROOTS = {"distill_watchdog": "watchdog", "distill_engine": "distill_engine"}

packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages.extend(f"{name}.{sub}" for sub in find_packages(folder))

setup(packages=packages, package_dir=ROOTS)
