// The Sentinel side, deployed into the workspace's resource group: the three custom tables, the Direct DCR with
// its streams and data flows, and the connector identity's Monitoring Metrics Publisher role on that DCR only.
// Tables and streams come from irm_connector/columns.json (passed in as outputColumns) so they cannot drift.
// The workspace exists already (an existing one, or the one sentinel-new-workspace.bicep created).
param workspaceName string
@description('Region of the workspace: a DCR that sends to a workspace must be in its region.')
param location string
param tags object = {}
param dcrName string
@description('Contents of irm_connector/columns.json.')
param outputColumns object
@minValue(4)
@maxValue(730)
param tableRetentionInDays int = 90
@minValue(4)
@maxValue(730)
@description('Interactive retention of IRMAlerts_CL: an alert stays open for months, and the IRMAlerts function and workbook need its first row.')
param alertsTableRetentionInDays int = 730
@allowed([
  'Analytics'
  'Basic'
])
@description('Plan of O365Audit_CL; the alerts and health tables stay Analytics because the analytics rules read them.')
param auditTablePlan string = 'Analytics'
@description('Principal id of the connector identity.')
param principalId string

var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'
var alerts = outputColumns.streams.alerts
var audit = outputColumns.streams.audit
var health = outputColumns.streams.health

resource workspace 'Microsoft.OperationalInsights/workspaces@2025-07-01' existing = {
  name: workspaceName
}

resource alertsTable 'Microsoft.OperationalInsights/workspaces/tables@2025-07-01' = {
  parent: workspace
  name: alerts.table
  properties: {
    plan: 'Analytics'
    retentionInDays: alertsTableRetentionInDays
    schema: {
      name: alerts.table
      description: alerts.description
      columns: [for c in alerts.columns: {
        name: c.name
        type: c.type
        description: c.description
      }]
    }
  }
}

resource auditTable 'Microsoft.OperationalInsights/workspaces/tables@2025-07-01' = {
  parent: workspace
  name: audit.table
  properties: {
    plan: auditTablePlan
    // A Basic table keeps 30 days interactive by itself (its retentionInDays is read-only); what is set is the
    // total, at least those 30 days.
    retentionInDays: auditTablePlan == 'Analytics' ? tableRetentionInDays : null
    totalRetentionInDays: auditTablePlan == 'Analytics' ? null : max(30, tableRetentionInDays)
    schema: {
      name: audit.table
      description: audit.description
      columns: [for c in audit.columns: {
        name: c.name
        type: c.type
        description: c.description
      }]
    }
  }
}

resource healthTable 'Microsoft.OperationalInsights/workspaces/tables@2025-07-01' = {
  parent: workspace
  name: health.table
  properties: {
    plan: 'Analytics'
    retentionInDays: tableRetentionInDays
    schema: {
      name: health.table
      description: health.description
      columns: [for c in health.columns: {
        name: c.name
        type: c.type
        description: c.description
      }]
    }
  }
}

resource dcr 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: dcrName
  location: location
  tags: tags
  kind: 'Direct'
  properties: {
    description: 'IRM connector: Insider Risk Management alerts, optional audit records and connector health into Sentinel.'
    streamDeclarations: {
      '${alerts.stream}': {
        columns: [for c in alerts.columns: {
          name: c.name
          type: c.type
        }]
      }
      '${audit.stream}': {
        columns: [for c in audit.columns: {
          name: c.name
          type: c.type
        }]
      }
      '${health.stream}': {
        columns: [for c in health.columns: {
          name: c.name
          type: c.type
        }]
      }
    }
    destinations: {
      logAnalytics: [
        {
          name: 'sentinel'
          workspaceResourceId: workspace.id
        }
      ]
    }
    dataFlows: [
      {
        streams: [
          alerts.stream
        ]
        destinations: [
          'sentinel'
        ]
        transformKql: 'source'
        outputStream: 'Custom-${alerts.table}'
      }
      {
        streams: [
          audit.stream
        ]
        destinations: [
          'sentinel'
        ]
        transformKql: 'source'
        outputStream: 'Custom-${audit.table}'
      }
      {
        streams: [
          health.stream
        ]
        destinations: [
          'sentinel'
        ]
        transformKql: 'source'
        outputStream: 'Custom-${health.table}'
      }
    ]
  }
  dependsOn: [
    alertsTable
    auditTable
    healthTable
  ]
}

resource dcrPublisherRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dcr.id, principalId, monitoringMetricsPublisher)
  scope: dcr
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
  }
}

output workspaceId string = workspace.id
output dcrId string = dcr.id
output dcrImmutableId string = dcr.properties.immutableId
output logsIngestionEndpoint string = dcr.properties.endpoints.logsIngestion
