// IRM alerts to Microsoft Sentinel: the whole deployment.
// Subscription scope (azd's default): creates the resource group, then deploys resources.bicep into it.
// Without azd: az deployment sub create -l <region> -f infra/main.bicep -p environmentName=<name> location=<region> ...
// Into an existing resource group instead: az deployment group create -g <rg> -f infra/resources.bicep -p ...
// Needs Bicep 0.36.1 or newer (the Microsoft Graph extension of modules/graph); azd 1.17.1 or newer brings one.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd: AZURE_ENV_NAME); seeds resource names.')
param environmentName string

// Flex Consumption exists only in some regions: the list of the Azure-Samples Flex Consumption azd templates
// (functions-quickstart-python-http-azd, May 2025), without the canary region. The Sentinel workspace can be in
// any region: its tables and data collection rule go to the workspace's region.
@minLength(1)
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({
  azd: {
    type: 'location'
  }
})
@description('Azure region of the connector resources (a region with Flex Consumption).')
param location string

@description('Resource group for the connector; empty = rg-<environmentName>.')
param resourceGroupName string = ''

@description('Object id of the person (or pipeline) deploying (azd: AZURE_PRINCIPAL_ID). Gets Storage Queue and Table Data Contributor, so the irm-connector CLI can read the state, and in secret or certificate mode Key Vault Secrets Officer and Certificates Officer, so the client secret or certificate can be stored. Empty = no role for the deployer.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
@description('Type of principalId (azd: AZURE_PRINCIPAL_TYPE).')
param principalType string = 'User'

@description('Microsoft 365 (Entra ID) tenant whose audit log is read. Empty = the deployment tenant (azd passes an unset O365_TENANT_ID as empty).')
param o365TenantId string = ''

@allowed([
  'managed_identity'
  'secret'
  'certificate'
])
@description('How the connector authenticates to the Office 365 Management Activity API.')
param o365AuthMode string = 'managed_identity'

@description('Grant the connector identity ActivityFeed.Read in this deployment, before the Function App exists (managed_identity mode; the deployer needs Privileged Role Administrator or Global Administrator in Entra ID). false = an admin grants it afterwards and the first token may lack it for up to 24 hours.')
param grantActivityFeedPermission bool = false

@description('App registration (client) id for secret or certificate mode; ignored in managed_identity mode.')
param o365ClientId string = ''

@secure()
@description('Client secret of the app registration (secret mode). Stored in Key Vault only when given. azd never passes it: its hook writes the secret into Key Vault instead.')
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

@allowed([
  'Analytics'
  'Basic'
])
@description('Table plan of O365Audit_CL. Basic costs a fraction per GB but keeps 30 days interactive, answers single-table queries only (charged per GB scanned; no KQL functions: paste the body of O365Audit instead) and cannot feed analytics rules. IRMAlerts_CL and IRMConnectorHealth_CL stay Analytics: the rules run on them.')
param auditTablePlan string = 'Analytics'

param initialLookback string = '24h'
param pollSchedule string = '0 */5 * * * *'

@minLength(3)
@maxLength(56)
@description('Name of the content queue (CONTENT_QUEUE): lowercase letters, digits and single hyphens; the poison queue adds -poison.')
param contentQueue string = 'irm-content'
param alertCategories string = 'InsiderRiskManagement'
param listingOverlap string = '1h'
param pollTimeBudget string = '4m'

@minValue(1)
@maxValue(60000)
@description('Requests per minute the connector allows itself against the Management API: one budget for every instance, per tenant (O365_MAX_REQUESTS_PER_MINUTE).')
param maxRequestsPerMinute int = 1000

@description('Timeout of one call to Entra ID, the Management API, Storage or Logs Ingestion.')
param httpTimeout string = '60s'

@minLength(1)
@maxLength(30)
@description('Prefix of the connector state tables in the storage account (STATE_TABLE_PREFIX): letters and digits, starting with a letter.')
param stateTablePrefix string = 'irm'

@minValue(8)
@maxValue(90)
@description('Days the dedupe keys are kept (the API keeps content 7 days; DEDUPE_RETENTION_DAYS).')
param dedupeRetentionDays int = 10

@description('Resource id of the existing Sentinel workspace (preferred way to name it).')
param sentinelWorkspaceResourceId string = ''

@description('Name of the existing Sentinel workspace (alternative to the resource id).')
param sentinelWorkspaceName string = ''

@description('Resource group of the existing Sentinel workspace (with sentinelWorkspaceName).')
param sentinelWorkspaceResourceGroup string = ''

@description('Subscription of the existing Sentinel workspace (with sentinelWorkspaceName); default: this one.')
param sentinelWorkspaceSubscriptionId string = ''

@description('Create a new Log Analytics workspace with Sentinel (a trial) in the connector resource group instead of using an existing one. Only when no existing workspace is named.')
param createSentinelWorkspace bool = false

@minValue(30)
@maxValue(730)
@description('Retention of a workspace created by this deployment, in days (PerGB2018 needs 30 or more; Sentinel includes 90).')
param newWorkspaceRetentionInDays int = 90

@minValue(4)
@maxValue(730)
@description('Interactive retention of the Analytics tables, in days (a Basic O365Audit_CL keeps 30 days interactive and this many in total, at least 30).')
param tableRetentionInDays int = 90

@minValue(4)
@maxValue(730)
@description('Interactive retention of IRMAlerts_CL, in days: an alert can stay open for months, and the IRMAlerts function reads its first row for FirstSeen. The table is small, so two years costs little.')
param alertsTableRetentionInDays int = 730

@description('Deploy the Sentinel data connector definition, functions, hunting queries, analytics rules and workbook.')
param deploySentinelContent bool = true

@minValue(1)
@maxValue(1000)
@description('Flex Consumption scale-out limit. Under 40 was, as of early 2026, taken only in a few regions: a provision refused for it needs 40 or more.')
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Turn on the Key Vault purge protection (recommended in production): a deleted vault stays recoverable for 90 days and nothing, azd down --purge included, can purge it sooner. Once on, it cannot be turned off.')
param keyVaultPurgeProtection bool = false

@allowed([
  'default'
  'recover'
])
@description('recover: bring back the Key Vault of this environment that an earlier removal left soft-deleted (azd down without --purge, or purge protection on), with its secrets; a new vault of the same name is refused meanwhile. azd: the preprovision hook sets KEY_VAULT_CREATE_MODE at every provision.')
param keyVaultCreateMode string = 'default'

@secure()
@description('App settings added to those the deployment writes, or replacing one of them, such as OTEL_TRACES_SAMPLER or AzureFunctionsJobHost__functionTimeout. The deployment writes the whole list, so a setting set by hand is gone after the next provision: lasting ones go here. Secure: not kept in the deployment history; still, put a secret in Key Vault and reference it.')
param extraAppSettings object = {}

var tags = {
  'azd-env-name': environmentName
}
var rgName = empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
// azd passes an unset variable as an empty string. The other forms of a tenant id are made one in resources.bicep,
// which is also deployed by itself (into an existing resource group).
var o365Tenant = empty(trim(o365TenantId)) ? tenant().tenantId : o365TenantId

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
    principalId: principalId
    principalType: principalType
    o365TenantId: o365Tenant
    o365AuthMode: o365AuthMode
    grantActivityFeedPermission: grantActivityFeedPermission
    o365ClientId: o365ClientId
    o365ClientSecret: o365ClientSecret
    o365CertificateName: o365CertificateName
    o365ClientCertificatePassword: o365ClientCertificatePassword
    o365Cloud: o365Cloud
    o365ContentTypes: o365ContentTypes
    o365PublisherId: o365PublisherId
    ingestAllAuditRecords: ingestAllAuditRecords
    auditTablePlan: auditTablePlan
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
    createSentinelWorkspace: createSentinelWorkspace
    newWorkspaceRetentionInDays: newWorkspaceRetentionInDays
    tableRetentionInDays: tableRetentionInDays
    alertsTableRetentionInDays: alertsTableRetentionInDays
    deploySentinelContent: deploySentinelContent
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    keyVaultPurgeProtection: keyVaultPurgeProtection
    keyVaultCreateMode: keyVaultCreateMode
    extraAppSettings: extraAppSettings
  }
}

output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output FUNCTION_APP_NAME string = resources.outputs.functionAppName
output FUNCTION_APP_ID string = resources.outputs.functionAppId
output UAMI_PRINCIPAL_ID string = resources.outputs.uamiPrincipalId
output UAMI_CLIENT_ID string = resources.outputs.uamiClientId
output DCR_ID string = resources.outputs.dcrId
output LOGS_INGESTION_ENDPOINT string = resources.outputs.logsIngestionEndpoint
output SENTINEL_WORKSPACE_ID string = resources.outputs.workspaceId
output KEY_VAULT_NAME string = resources.outputs.keyVaultName
output STORAGE_ACCOUNT_NAME string = resources.outputs.storageAccountName
output ACTIVITYFEED_GRANTED_IN_DEPLOYMENT bool = resources.outputs.activityFeedGranted
