"""What both sides share: the network description, its numpy reference and the network file.

``network`` describes a model as plain arrays and layer records (the converter's importers
write it, the exporters read it); ``reference`` runs it in numpy, the oracle every export is
tested against and the runtime's ``numpy`` backend; ``network_file`` stores it in a bundle as
``network.npz`` + manifest JSON. numpy only: a device imports this package too.
"""
