"""The LLM gateway that VMs reach at http://169.254.169.254/gateway/llm/<provider>/."""
