"""Virtual machines: guest images, disks, networking, runtimes and the manager that owns them."""
