"""The metadata service that VMs reach at 169.254.169.254."""
