Feature: Failures of the parts around the saga
  No accepted order is lost or left PROCESSING when a part fails.

  @user-api-down
  Scenario: With the user API down, the order is canceled as USER_API_UNAVAILABLE
    Given a user called "kim"
    When the user places an order of "10.00" in 1 installment by "cash"
    Then the order is accepted as PROCESSING
    And the order becomes CANCELED because USER_API_UNAVAILABLE

  @restartable
  Scenario: Orders placed while a validator is stopped settle once it is back
    Given a user called "leo"
    And the balance validator is stopped
    When the user places an order of "10.00" in 1 installment by "cash"
    Then the order is accepted as PROCESSING
    And the user step has answered while the order is still PROCESSING
    When the balance validator is started again
    Then the order becomes APPROVED
