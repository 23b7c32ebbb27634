// Key Vault (RBAC mode) for the Management API credentials. The connector identity may only read secrets; the
// deployer (optional) may write the one kind of credential its mode uses, so the client secret or certificate goes
// straight into the vault (azd postprovision hook, az keyvault certificate import) and never into a file.
param name string
param location string
param tags object = {}
@description('Principal id of the connector identity.')
param principalId string
@description('Object id of the deployer: Key Vault Secrets Officer (secret mode), or Certificates Officer and Secrets User (certificate mode). Empty = none.')
param deployerPrincipalId string = ''
@allowed([
  'secret'
  'certificate'
])
@description('The credential the deployer stores: a client secret (it writes secrets), or a certificate (it imports certificates, and reads the certificate with its key, a secret, for the command line).')
param deployerStores string = 'secret'
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param deployerPrincipalType string = 'User'
@secure()
@description('Management API client secret; stored only when given.')
param clientSecret string = ''
@secure()
@description('Password of the client certificate; stored only when given.')
param certificatePassword string = ''
@description('Turn on purge protection (recommended in production; then the vault cannot be purged for 90 days).')
param enablePurgeProtection bool = false
@allowed([
  'default'
  'recover'
])
@description('recover: bring back this vault, soft-deleted by an earlier removal of the deployment (the preprovision hook finds it), with its secrets and certificates; default: create or update it.')
param createMode string = 'default'

var clientSecretName = 'o365-client-secret'
var certificatePasswordName = 'o365-client-certificate-password'
var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var keyVaultSecretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
var keyVaultCertificatesOfficer = 'a4417e6f-fecd-4de8-b567-7b0420556985'
var deployerSecretsRole = deployerStores == 'secret' ? keyVaultSecretsOfficer : keyVaultSecretsUser

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: Flex Consumption without VNet integration resolves Key Vault references over the public endpoint; access is Entra ID + RBAC only.
  // checkov:skip=CKV_AZURE_189: Same reason: public network access is needed without a VNet.
  // checkov:skip=CKV_AZURE_110: Purge protection is the parameter enablePurgeProtection (main.bicep keyVaultPurgeProtection, KEY_VAULT_PURGE_PROTECTION; off by default so `azd down --purge` can remove the vault; turn it on in production).
  // checkov:skip=CKV_AZURE_42: Soft delete is on (90 days); recoverability beyond that is purge protection, see CKV_AZURE_110.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    createMode: createMode
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: enablePurgeProtection ? true : null
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource clientSecretEntry 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(clientSecret)) {
  // checkov:skip=CKV_AZURE_114: contentType IS set below; checkov (pycep) nests a conditional resource's body one level deeper and does not see it.
  // checkov:skip=CKV_AZURE_41: The secret's lifetime is the app registration's client secret expiry, set in Entra ID; rotate both together.
  parent: vault
  name: clientSecretName
  properties: {
    value: clientSecret
    contentType: 'text/plain'
  }
}

resource certificatePasswordEntry 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(certificatePassword)) {
  // checkov:skip=CKV_AZURE_114: contentType IS set below; checkov (pycep) nests a conditional resource's body one level deeper and does not see it.
  // checkov:skip=CKV_AZURE_41: The password lives as long as the certificate it protects, whose expiry Key Vault tracks.
  parent: vault
  name: certificatePasswordName
  properties: {
    value: certificatePassword
    contentType: 'text/plain'
  }
}

resource secretsUserRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

resource deployerSecretsAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(vault.id, deployerPrincipalId, deployerSecretsRole)
  scope: vault
  properties: {
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', deployerSecretsRole)
  }
}

resource deployerCertificatesAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId) && deployerStores == 'certificate') {
  name: guid(vault.id, deployerPrincipalId, keyVaultCertificatesOfficer)
  scope: vault
  properties: {
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultCertificatesOfficer)
  }
}

output name string = vault.name
output id string = vault.id
output vaultUri string = vault.properties.vaultUri
output clientSecretName string = clientSecretName
output certificatePasswordName string = certificatePasswordName
