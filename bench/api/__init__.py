"""What a plug-in implements (method, edit, judge, attack, image source) and the registries that find plug-ins by name."""
