Feature: The saga settles every order
  The orchestrator asks the user validator and the balance validator; both
  must pass for the order to be APPROVED. The balance limit is 10000.00,
  inclusive; the stub user API refuses user ids containing "invalid".

  Scenario Outline: Orders settle by their user and value
    Given a user called "<user>"
    When the user places an order of "<value>" in <installments> installments by "<method>"
    Then the order is accepted as PROCESSING
    And the order becomes <outcome>

    Examples:
      | user          | value      | installments | method      | outcome                                  |
      | carol         | 1500.00    | 10           | credit_card | APPROVED                                 |
      | dave          | 150.00     | 1            | debit_card  | APPROVED                                 |
      | erin-invalid  | 1000000.00 | 1            | credit_card | CANCELED                                 |
      | frank-invalid | 100.00     | 1            | cash        | CANCELED because USER_INVALID            |
      | grace         | 10000.01   | 1            | transfer    | CANCELED because BALANCE_LIMIT_EXCEEDED  |
      | heidi         | 10000.00   | 1            | transfer    | APPROVED                                 |

  Scenario: An approved order's timeline shows every step
    Given a user called "ivan"
    When the user places an order of "42.00" in 1 installment by "cash"
    Then the order becomes APPROVED
    And the order's timeline reads:
      | order_created  |
      | command_sent   |
      | command_sent   |
      | reply_received |
      | reply_received |
      | status_changed |
    And the timeline ends with the status changing to APPROVED

  Scenario: A canceled order's timeline stops at the first failed step
    Given a user called "judy"
    When the user places an order of "20000.00" in 1 installment by "cash"
    Then the order becomes CANCELED because BALANCE_LIMIT_EXCEEDED
    And the order's timeline starts with:
      | order_created |
      | command_sent  |
      | command_sent  |
    And the timeline ends with the status changing to CANCELED because BALANCE_LIMIT_EXCEEDED

  Scenario Outline: On a warm system an order settles within a second of its 201
    The reference's timing promise, measured by the client: from the 201 that
    accepts the order to the first read that shows it settled.
    Given the system has settled an order already
    And a user called "<user>"
    When the user places an order of "<value>" in 1 installment by "cash"
    Then the order is accepted as PROCESSING
    And the order settles as <outcome> within 1 second of its 201

    Examples:
      | user   | value    | outcome  |
      | kate   | 25.00    | APPROVED |
      | liam   | 10000.01 | CANCELED |
