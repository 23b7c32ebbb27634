// Sentinel content for the IRM connector, deployed into the workspace's resource group: the data connector
// definition (Sentinel's Data connectors gallery), the KQL functions (parsers), the hunting queries, the analytics
// rules and the workbook. One copy: everything is loaded from the files under sentinel/, which keep Azure-Sentinel's
// formats (YAML for rules, hunting queries and parsers; JSON for the workbook and the connector's UI definition).
// loadYamlContent/loadJsonContent read them when the Bicep is compiled. tests/infra/test_sentinel_content.py
// fails when a file under sentinel/ is not loaded here, or loaded twice.
param workspaceName string
@description('Region of the workbook (the workspace region).')
param location string
@description('Microsoft 365 tenant of this connector: the silent-connector rule watches its health rows.')
param o365TenantId string
@description('When this deployment ran: the silent-connector rule leaves a connector 2 hours from it for its first row.')
param deployedAt string = utcNow('yyyy-MM-ddTHH:mm:ssZ')

resource workspace 'Microsoft.OperationalInsights/workspaces@2025-07-01' existing = {
  name: workspaceName
}

var parsers = [
  loadYamlContent('../../sentinel/parsers/IRMAlerts.yaml')
  loadYamlContent('../../sentinel/parsers/Compliance_IRM_AuditGeneral.yaml')
  loadYamlContent('../../sentinel/parsers/O365Audit.yaml')
]

var huntingQueries = [
  loadYamlContent('../../sentinel/hunting/irm-alerted-user-auditlogs.yaml')
  loadYamlContent('../../sentinel/hunting/irm-alerted-user-signins.yaml')
  loadYamlContent('../../sentinel/hunting/irm-alerted-user-m365-activity.yaml')
]

var analyticsRules = [
  loadYamlContent('../../sentinel/analytics/irm-high-severity-alert.yaml')
  loadYamlContent('../../sentinel/analytics/irm-connector-stale.yaml')
  loadYamlContent('../../sentinel/analytics/irm-connector-poison-queue.yaml')
  loadYamlContent('../../sentinel/analytics/irm-connector-backlog-age.yaml')
  loadYamlContent('../../sentinel/analytics/irm-connector-ingestion-refused.yaml')
  loadYamlContent('../../sentinel/analytics/irm-connector-content-lost.yaml')
  silentRule
]

// The rules above read every tenant's rows alike and have fixed ids, shared by every connector that feeds the
// workspace. A connector that never wrote a row has no tenant in them, so the silent-connector rule is one copy per
// tenant: its id derived from the tenant, the tenant and the deployment's time written into its query.
var silentTemplate = loadYamlContent('../../sentinel/analytics/irm-connector-silent.yaml')
// One spelling, so that the rule's id and name do not change with the case the tenant was typed in.
var tenant = toLower(o365TenantId)
var silentTenant = 'let tenant = "${tenant}";'
var silentDeployedAt = 'let deployedAt = datetime(${deployedAt});'
var silentQuery = replace(replace(silentTemplate.query, 'let tenant = "00000000-0000-0000-0000-000000000000";', silentTenant), 'let deployedAt = datetime(2000-01-01T00:00:00Z);', silentDeployedAt)
var silentRule = union(silentTemplate, {
  id: guid(silentTemplate.id, tenant)
  name: '${silentTemplate.name} (tenant ${tenant})'
  query: silentQuery
})

var connectorUi = loadJsonContent('../../sentinel/dataconnectors/IRMConnector.json')

// Azure-Sentinel YAML writes trigger operators short (gt) and durations as <n>m, <n>h or <n>d; the alertRules
// API wants the long operator names and ISO 8601 durations (PT5M, PT1H, P14D).
var triggerOperators = {
  gt: 'GreaterThan'
  lt: 'LessThan'
  eq: 'Equal'
  ne: 'NotEqual'
  GreaterThan: 'GreaterThan'
  LessThan: 'LessThan'
  Equal: 'Equal'
  NotEqual: 'NotEqual'
}

resource connectorDefinition 'Microsoft.SecurityInsights/dataConnectorDefinitions@2025-09-01' = {
  name: connectorUi.id
  scope: workspace
  kind: 'Customizable'
  properties: {
    connectorUiConfig: {
      id: connectorUi.id
      title: connectorUi.title
      publisher: connectorUi.publisher
      descriptionMarkdown: connectorUi.descriptionMarkdown
      graphQueries: connectorUi.graphQueries
      dataTypes: connectorUi.dataTypes
      connectivityCriteria: connectorUi.connectivityCriteria
      availability: connectorUi.availability
      permissions: connectorUi.permissions
      instructionSteps: connectorUi.instructionSteps
    }
  }
}

// Saved searches one at a time: the workspace answers 409 NewerDataExists to parallel writes
// (Azure/Azure-Sentinel#10481). Each carries etag '*' in its properties: without it a saved search that exists
// already is answered 409 Conflict, so every `azd provision` after the first failed here (MicrosoftDocs/azure-docs
// #49275). The API's definition puts etag beside properties, where it has no effect: Microsoft's own module
// (Azure/bicep-registry-modules, avm/res/operational-insights/workspace/saved-search) and Azure-Sentinel's parser
// templates set it in properties, as here.
@batchSize(1)
resource functions 'Microsoft.OperationalInsights/workspaces/savedSearches@2025-07-01' = [for parser in parsers: {
  parent: workspace
  name: parser.id
  properties: {
    #disable-next-line BCP037
    etag: '*'
    category: parser.Category
    displayName: parser.Function.Title
    functionAlias: parser.FunctionAlias
    query: parser.FunctionQuery
    version: 2
    tags: [
      {
        name: 'version'
        value: parser.Function.Version
      }
    ]
  }
}]

@batchSize(1)
resource hunting 'Microsoft.OperationalInsights/workspaces/savedSearches@2025-07-01' = [for query in huntingQueries: {
  parent: workspace
  name: query.id
  properties: {
    #disable-next-line BCP037
    etag: '*'
    category: 'Hunting Queries'
    displayName: query.name
    query: query.query
    version: 2
    tags: [
      {
        name: 'description'
        value: query.description
      }
      {
        name: 'tactics'
        value: join(query.tactics, ',')
      }
      {
        name: 'techniques'
        value: join(query.relevantTechniques, ',')
      }
    ]
  }
  dependsOn: [
    functions
  ]
}]

resource rules 'Microsoft.SecurityInsights/alertRules@2025-09-01' = [for rule in analyticsRules: {
  name: rule.id
  scope: workspace
  kind: 'Scheduled'
  properties: {
    displayName: rule.name
    description: rule.description
    severity: rule.severity
    enabled: true
    query: rule.query
    queryFrequency: endsWith(rule.queryFrequency, 'd') ? 'P${toUpper(rule.queryFrequency)}' : 'PT${toUpper(rule.queryFrequency)}'
    queryPeriod: endsWith(rule.queryPeriod, 'd') ? 'P${toUpper(rule.queryPeriod)}' : 'PT${toUpper(rule.queryPeriod)}'
    triggerOperator: triggerOperators[rule.triggerOperator]
    triggerThreshold: rule.triggerThreshold
    suppressionDuration: 'PT5H'
    suppressionEnabled: false
    tactics: rule.tactics
    techniques: rule.relevantTechniques
    entityMappings: rule.?entityMappings
    customDetails: rule.?customDetails
    alertDetailsOverride: rule.?alertDetailsOverride
    eventGroupingSettings: rule.eventGroupingSettings
    incidentConfiguration: {
      createIncident: rule.incidentConfiguration.createIncident
      groupingConfiguration: {
        enabled: rule.incidentConfiguration.groupingConfiguration.enabled
        reopenClosedIncident: rule.incidentConfiguration.groupingConfiguration.reopenClosedIncident
        lookbackDuration: endsWith(rule.incidentConfiguration.groupingConfiguration.lookbackDuration, 'd') ? 'P${toUpper(rule.incidentConfiguration.groupingConfiguration.lookbackDuration)}' : 'PT${toUpper(rule.incidentConfiguration.groupingConfiguration.lookbackDuration)}'
        matchingMethod: rule.incidentConfiguration.groupingConfiguration.matchingMethod
        groupByEntities: rule.incidentConfiguration.groupingConfiguration.groupByEntities
        groupByAlertDetails: rule.incidentConfiguration.groupingConfiguration.groupByAlertDetails
        groupByCustomDetails: rule.incidentConfiguration.groupingConfiguration.groupByCustomDetails
      }
    }
  }
}]

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(workspace.id, 'irm-connector-workbook')
  location: location
  kind: 'shared'
  properties: {
    displayName: 'Insider Risk Management alerts (IRM connector)'
    category: 'sentinel'
    sourceId: workspace.id
    // The workspace the workbook opens on when it is opened without one (from the Workbooks gallery).
    serializedData: string(union(loadJsonContent('../../sentinel/workbooks/irm-connector.workbook.json'), {
      fallbackResourceIds: [
        workspace.id
      ]
    }))
    version: 'Notebook/1.0'
  }
}

output workbookId string = workbook.id
output connectorDefinitionId string = connectorDefinition.id
