"""The learning loop on the workstation: device logs -> labelled data -> a gated fine-tune.

:mod:`.logs` reads the bridge's reading logs (``edgelstm bridge --log-readings``),
:mod:`.dataset` turns them and a maintenance-event file into training sequences
(``edgelstm dataset``), :mod:`.finetune` fine-tunes a model on them and decides, on held-out
machines, whether the update is better (``edgelstm finetune``). The accepted model is then
converted as usual and reaches the device through the bridge's model update.
"""
