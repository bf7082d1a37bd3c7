# Data: each corpus fetched (canonical address or the mirror), verified by sha256, and prepared.


rule prepare_data:
    output:
        "results/data/{dataset}.json",
    log:
        "results/logs/prepare_data/{dataset}.log",
    params:
        root=config["data_root"],
        mirror=config["data_mirror"],
    wildcard_constraints:
        dataset="ptb|wikitext-2|wikitext-103",
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/prepare_data.py"
