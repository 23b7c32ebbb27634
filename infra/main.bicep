// IRM alerts to Microsoft Sentinel: the whole deployment.
// Subscription scope (azd's default): creates the resource group, then deploys resources.bicep into it.
// Without azd: az deployment sub create -l <region> -f infra/main.bicep -p environmentName=<name> location=<region> ...
// Into an existing resource group instead: az deployment group create -g <rg> -f infra/resources.bicep -p ...
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd: AZURE_ENV_NAME); seeds resource names.')
param environmentName string

@minLength(1)
@description('Azure region of the connector resources.')
param location string

@description('Resource group for the connector; empty = rg-<environmentName>.')
param resourceGroupName string = ''

@description('Microsoft 365 (Entra ID) tenant whose audit log is read. Default: the deployment tenant.')
param o365TenantId string = tenant().tenantId

@allowed([
  'managed_identity'
  'secret'
  'certificate'
])
@description('How the connector authenticates to the Office 365 Management Activity API.')
param o365AuthMode string = 'managed_identity'

@description('App registration (client) id for secret or certificate mode; ignored in managed_identity mode.')
param o365ClientId string = ''

@secure()
@description('Client secret of the app registration (secret mode). Stored in Key Vault only when given.')
param o365ClientSecret string = ''

@description('Name of the Key Vault certificate (certificate mode); its secret (base64 PFX) is referenced by O365_CLIENT_CERTIFICATE.')
param o365CertificateName string = 'o365-client-certificate'

@secure()
@description('Password of the certificate, if any (certificate mode). Stored in Key Vault only when given.')
param o365ClientCertificatePassword string = ''

@allowed([
  'Commercial'
  'GCC'
  'GCCHigh'
  'DoD'
])
param o365Cloud string = 'Commercial'

@description('Comma-separated Management Activity API content types to poll.')
param o365ContentTypes string = 'Audit.General'

@description('PublisherIdentifier sent with every Management API call; empty = the tenant id.')
param o365PublisherId string = ''

@description('Also send every audit record of the polled content types to O365Audit_CL (much more data).')
param ingestAllAuditRecords bool = false

param initialLookback string = '24h'
param pollSchedule string = '0 */5 * * * *'
param contentQueue string = 'irm-content'
param alertCategories string = 'InsiderRiskManagement'
param listingOverlap string = '1h'
param pollTimeBudget string = '4m'

@description('Requests per minute the connector allows itself against the Management API (per worker).')
param maxRequestsPerMinute int = 1000

@description('Timeout of one call to Entra ID, the Management API, Storage or Logs Ingestion.')
param httpTimeout string = '60s'

@description('Prefix of the connector state tables in the storage account.')
param stateTablePrefix string = 'irm'

@description('Days the dedupe keys are kept (the API keeps content 7 days).')
param dedupeRetentionDays int = 10

@description('Resource id of the existing Sentinel workspace (preferred way to name it).')
param sentinelWorkspaceResourceId string = ''

@description('Name of the existing Sentinel workspace (alternative to the resource id).')
param sentinelWorkspaceName string = ''

@description('Resource group of the existing Sentinel workspace (with sentinelWorkspaceName).')
param sentinelWorkspaceResourceGroup string = ''

@description('Subscription of the existing Sentinel workspace (with sentinelWorkspaceName); default: this one.')
param sentinelWorkspaceSubscriptionId string = ''

@minValue(4)
@maxValue(730)
@description('Interactive retention of the three custom tables, in days.')
param tableRetentionInDays int = 90

@description('Deploy the Sentinel functions, hunting queries, analytics rules and workbook.')
param deploySentinelContent bool = true

@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

var tags = {
  'azd-env-name': environmentName
}
var rgName = empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: rgName
  location: location
  tags: tags
}

module resources 'resources.bicep' = {
  name: 'irm-connector-resources'
  scope: rg
  params: {
    environmentName: environmentName
    location: location
    tags: tags
    o365TenantId: o365TenantId
    o365AuthMode: o365AuthMode
    o365ClientId: o365ClientId
    o365ClientSecret: o365ClientSecret
    o365CertificateName: o365CertificateName
    o365ClientCertificatePassword: o365ClientCertificatePassword
    o365Cloud: o365Cloud
    o365ContentTypes: o365ContentTypes
    o365PublisherId: o365PublisherId
    ingestAllAuditRecords: ingestAllAuditRecords
    initialLookback: initialLookback
    pollSchedule: pollSchedule
    contentQueue: contentQueue
    alertCategories: alertCategories
    listingOverlap: listingOverlap
    pollTimeBudget: pollTimeBudget
    maxRequestsPerMinute: maxRequestsPerMinute
    httpTimeout: httpTimeout
    stateTablePrefix: stateTablePrefix
    dedupeRetentionDays: dedupeRetentionDays
    sentinelWorkspaceResourceId: sentinelWorkspaceResourceId
    sentinelWorkspaceName: sentinelWorkspaceName
    sentinelWorkspaceResourceGroup: sentinelWorkspaceResourceGroup
    sentinelWorkspaceSubscriptionId: sentinelWorkspaceSubscriptionId
    tableRetentionInDays: tableRetentionInDays
    deploySentinelContent: deploySentinelContent
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
}

output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output FUNCTION_APP_NAME string = resources.outputs.functionAppName
output UAMI_PRINCIPAL_ID string = resources.outputs.uamiPrincipalId
output UAMI_CLIENT_ID string = resources.outputs.uamiClientId
output DCR_ID string = resources.outputs.dcrId
output LOGS_INGESTION_ENDPOINT string = resources.outputs.logsIngestionEndpoint
output SENTINEL_WORKSPACE_ID string = resources.outputs.workspaceId
output KEY_VAULT_NAME string = resources.outputs.keyVaultName
