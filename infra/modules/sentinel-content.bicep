// Sentinel content for the IRM connector, deployed into the workspace's resource group.
// The KQL and the workbook live as plain files under sentinel/ (one copy): loaded here with loadTextContent.
param workspaceName string
@description('Region of the workbook (the workspace region).')
param location string

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

// ---- KQL functions ----
resource fnIrmAlerts 'Microsoft.OperationalInsights/workspaces/savedSearches@2020-08-01' = {
  parent: workspace
  name: 'irm-function-irmalerts'
  properties: {
    category: 'IRM connector'
    displayName: 'IRMAlerts: one row per IRM alert with its latest state'
    functionAlias: 'IRMAlerts'
    query: loadTextContent('../../sentinel/functions/IRMAlerts.kql')
    version: 2
    tags: [
      {
        name: 'description'
        value: 'IRMAlerts_CL without duplicate records, one row per AlertId with its latest status, first seen and resolution time.'
      }
    ]
  }
}

resource fnCompliance 'Microsoft.OperationalInsights/workspaces/savedSearches@2020-08-01' = {
  parent: workspace
  name: 'irm-function-compliance-irm-auditgeneral'
  properties: {
    category: 'IRM connector'
    displayName: 'Compliance_IRM_AuditGeneral: old Logic App column names on IRMAlerts_CL'
    functionAlias: 'Compliance_IRM_AuditGeneral'
    query: loadTextContent('../../sentinel/functions/Compliance_IRM_AuditGeneral.kql')
    version: 2
    tags: [
      {
        name: 'description'
        value: 'Compatibility view with the column names of Compliance_IRM_AuditGeneral_CL (AlertType_s, Status_s, Data_s, ...).'
      }
    ]
  }
}

// ---- hunting queries ----
resource huntAuditLogs 'Microsoft.OperationalInsights/workspaces/savedSearches@2020-08-01' = {
  parent: workspace
  name: 'irm-hunting-alerted-user-auditlogs'
  properties: {
    category: 'Hunting Queries'
    displayName: 'IRM alerted user: operations and results in Entra ID audit logs'
    query: loadTextContent('../../sentinel/hunting/irm-alerted-user-auditlogs.kql')
    version: 2
    tags: [
      {
        name: 'description'
        value: 'Directory operations initiated by users with an Insider Risk Management alert, with their results.'
      }
      {
        name: 'tactics'
        value: 'Exfiltration,Persistence'
      }
    ]
  }
  dependsOn: [
    fnIrmAlerts
  ]
}

resource huntSignins 'Microsoft.OperationalInsights/workspaces/savedSearches@2020-08-01' = {
  parent: workspace
  name: 'irm-hunting-alerted-user-signins'
  properties: {
    category: 'Hunting Queries'
    displayName: 'IRM alerted user: sign-in locations and IP addresses'
    query: loadTextContent('../../sentinel/hunting/irm-alerted-user-signins.kql')
    version: 2
    tags: [
      {
        name: 'description'
        value: 'Sign-in locations, IP addresses, applications and failures of users with an Insider Risk Management alert.'
      }
      {
        name: 'tactics'
        value: 'InitialAccess,Exfiltration'
      }
    ]
  }
  dependsOn: [
    fnIrmAlerts
  ]
}

// ---- analytics rules ----
resource ruleHighSeverity 'Microsoft.SecurityInsights/alertRules@2024-03-01' = {
  name: guid(workspace.id, 'irm-connector', 'high-severity-irm-alert')
  scope: workspace
  kind: 'Scheduled'
  properties: {
    displayName: 'New or escalated High-severity Insider Risk Management alert'
    description: 'An Insider Risk Management alert is new with High severity, was raised to High, was confirmed (Active to Investigating) or was reopened. Incidents are grouped by AlertId, so later updates of one alert join its incident.'
    severity: 'High'
    enabled: true
    query: loadTextContent('../../sentinel/analytics/irm-high-severity-alert.kql')
    queryFrequency: 'PT15M'
    queryPeriod: 'P2D'
    triggerOperator: 'GreaterThan'
    triggerThreshold: 0
    suppressionDuration: 'PT1H'
    suppressionEnabled: false
    tactics: [
      'Exfiltration'
      'Collection'
    ]
    eventGroupingSettings: {
      aggregationKind: 'AlertPerResult'
    }
    alertDetailsOverride: {
      alertDisplayNameFormat: 'IRM alert {{Name}} ({{Change}})'
      alertDescriptionFormat: 'Insider Risk Management alert {{AlertId}} for {{UserPrincipalName}}: {{Change}}, status {{Status}}.'
    }
    customDetails: {
      AlertId: 'AlertId'
      AlertName: 'Name'
      AlertStatus: 'Status'
      AlertChange: 'Change'
      PolicyId: 'PolicyId'
      AlertCreated: 'CreationTime'
    }
    entityMappings: [
      {
        entityType: 'Account'
        fieldMappings: [
          {
            identifier: 'FullName'
            columnName: 'UserPrincipalName'
          }
          {
            identifier: 'Name'
            columnName: 'AccountName'
          }
          {
            identifier: 'UPNSuffix'
            columnName: 'AccountUPNSuffix'
          }
        ]
      }
    ]
    incidentConfiguration: {
      createIncident: true
      groupingConfiguration: {
        enabled: true
        reopenClosedIncident: false
        lookbackDuration: 'P7D'
        matchingMethod: 'Selected'
        groupByEntities: []
        groupByAlertDetails: []
        groupByCustomDetails: [
          'AlertId'
        ]
      }
    }
  }
}

resource ruleConnectorStale 'Microsoft.SecurityInsights/alertRules@2024-03-01' = {
  name: guid(workspace.id, 'irm-connector', 'connector-stale')
  scope: workspace
  kind: 'Scheduled'
  properties: {
    displayName: 'IRM connector stale for more than 2 hours'
    description: 'The IRM connector wrote no health row for 2 hours, or its Management API watermark is more than 2 hours behind: Insider Risk Management alerts are not reaching Sentinel.'
    severity: 'Medium'
    enabled: true
    query: loadTextContent('../../sentinel/analytics/irm-connector-stale.kql')
    queryFrequency: 'PT30M'
    queryPeriod: 'PT3H'
    triggerOperator: 'GreaterThan'
    triggerThreshold: 0
    suppressionDuration: 'PT1H'
    suppressionEnabled: false
    tactics: [
      'DefenseEvasion'
    ]
    eventGroupingSettings: {
      aggregationKind: 'SingleAlert'
    }
    customDetails: {
      Reason: 'Reason'
      ContentType: 'ContentType'
      LagSeconds: 'LagSeconds'
      LastError: 'LastError'
    }
    incidentConfiguration: {
      createIncident: true
      groupingConfiguration: {
        enabled: true
        reopenClosedIncident: false
        lookbackDuration: 'P1D'
        matchingMethod: 'AnyAlert'
        groupByEntities: []
        groupByAlertDetails: []
        groupByCustomDetails: []
      }
    }
  }
}

// ---- workbook ----
resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(workspace.id, 'irm-connector-workbook')
  location: location
  kind: 'shared'
  properties: {
    displayName: 'Insider Risk Management alerts (IRM connector)'
    category: 'sentinel'
    sourceId: workspace.id
    serializedData: loadTextContent('../../sentinel/workbooks/irm-connector.workbook.json')
    version: 'Notebook/1.0'
  }
}

output workbookId string = workbook.id
