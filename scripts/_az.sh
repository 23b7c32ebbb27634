# The Azure CLI as the deployment scripts call it, sourced by the hooks, the grant script and the secret script.
# shellcheck shell=bash

# The Azure CLI on Windows ends its tsv lines with \r\n, and Git Bash keeps the \r in $(...): strip it.
az() { command az "$@" | tr -d '\r'; }
# Whether the Azure CLI itself is installed: `command -v az` finds the function above, always.
az_installed() { type -P az >/dev/null 2>&1; }

# App Service's API for reading an app's Key Vault references again (it does by itself only once a day), relative
# to the Function App's resource id: `az rest` sends a URL without a host to the cloud's Resource Manager.
REFRESH_API="config/configreferences/appsettings/refresh?api-version=2022-03-01"
