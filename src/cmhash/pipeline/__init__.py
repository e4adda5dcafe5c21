"""The DVC pipeline over the library: params.yaml (:mod:`.params`, read by :mod:`.params_file`),
where each stage reads and writes (:mod:`.layout`), one module per stage of dvc.yaml
(:mod:`.stages`), the data checks (:mod:`.validation`), the results table (:mod:`.report`), metric
diffs between versions (:mod:`.metrics_diff`), tuning (:mod:`.tuning`), the offline plots page
(:mod:`.plots_page`) and the ``cmhash`` command line (:mod:`.cli`)."""
