from setuptools import find_packages, setup

setup(
    name="wattchecker-client",
    version="0.1.0",
    description="Reads a RATOC REX-BTWATTCH1 Bluetooth power meter, keeps every reading, uploads to BigQuery",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["wattchecker_client", "wattchecker_client.*"]),
    # The live page and its vendored uPlot (MIT, licence alongside); served from the package.
    package_data={"wattchecker_client": ["static/*"]},
    install_requires=[
        "crcmod>=1.7",
        "PyYAML>=5.4",
    ],
    extras_require={
        "bigquery": ["google-cloud-bigquery>=3.0"],
        "report": ["matplotlib>=3.5"],
        "mqtt": ["paho-mqtt>=2.0"],
        "http": ["prometheus-client>=0.17"],
        "ble": ["bleak>=0.21"],
        "influxdb": [],  # line protocol over the standard library's http.client: nothing to install
        "test": [
            "pytest>=7",
            "pytest-xdist>=3",  # the process tests mostly wait on real time: four at once on two cores
            "hypothesis>=6.50",
            "google-cloud-bigquery>=3.0",
            # The BigQuery emulator for the uploader's tests; it needs Python 3.11+,
            # and those tests skip without it.
            "crucible-emulator[server]==0.1.0a2; python_version >= '3.11'",
            "matplotlib>=3.5",  # to render the report's chart in a test
            "paho-mqtt>=2.0",
            "prometheus-client>=0.17",
            "bleak>=0.21",
        ],
    },
    entry_points={"console_scripts": ["wattchecker-client=wattchecker_client.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Operating System :: POSIX :: Linux",
    ],
)
