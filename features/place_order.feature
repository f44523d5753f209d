Feature: Placing an order
  A client places an order with a form (urlencoded or multipart). The order is
  accepted at once as PROCESSING and validated in the background.

  Scenario: A new order is PROCESSING and listed for its user
    Given a user called "alice"
    When the user places an order of "1000.00" in 1 installment by "credit_card"
    Then the order is accepted as PROCESSING
    And the user's orders list it

  Scenario: A multipart form works the same
    Given a user called "amelia"
    When the user places a multipart order of "1000.5" in 2 installments by "credit_card"
    Then the order is accepted as PROCESSING
    And its value reads "1000.50"

  Scenario Outline: A method does not allow that many installments
    Given a user called "bob"
    When the user places an order of "100.00" in <installments> installments by "<method>"
    Then the order is refused with 400 naming "installment"

    Examples:
      | method      | installments |
      | credit_card | 13           |
      | debit_card  | 2            |
      | transfer    | 2            |
      | cash        | 3            |

  Scenario: A method outside the table is refused with 400, naming it
    Given a user called "bella"
    When the user places an order of "100.00" in 1 installment by "not_exist"
    Then the order is refused with 400 naming "method"

  Scenario Outline: A missing or malformed field is refused with 422, naming it
    Given a user called "carl"
    When the user sends an order form with <field> set to "<value>"
    Then the order is refused with 422 naming "<field>" because it "<problem>"

    Examples:
      | field       | value      | problem                                |
      | value       |            | is required                            |
      | value       | abc        | must be a decimal number               |
      | value       | -10.00     | must be greater than 0                 |
      | value       | 0          | must be greater than 0                 |
      | value       | 10.001     | must have at most 2 decimal places     |
      | value       | 1e30       | must be a decimal number               |
      | value       | NaN        | must be a decimal number               |
      | value       | 1,000.00   | must be a decimal number               |
      | value       | 1000000000000 | must be at most 999999999999.99     |
      | user_id     |            | is required                            |
      | installment |            | is required                            |
      | installment | 0          | must be at least 1                     |
      | installment | 1.5        | must be a whole number                 |
      | installment | two        | must be a whole number                 |
      | method      |            | is required                            |

  Scenario Outline: A field left out is refused with 422, naming it
    Given a user called "cleo"
    When the user sends an order form without <field>
    Then the order is refused with 422 naming "<field>" because it "is required"

    Examples:
      | field       |
      | value       |
      | user_id     |
      | installment |
      | method      |

  Scenario: A user id longer than 64 characters is refused
    When an order is sent for a user id of 10000 characters
    Then the order is refused with 422 naming "user_id" because it "must be at most 64 characters"

  Scenario: A body that is not a form is refused with 415
    When an order is sent as JSON
    Then the answer is 415 with error "unsupported_media_type"

  Scenario: Retrying with the same Idempotency-Key returns the same order
    Given a user called "dora"
    When the user places an order of "50.00" in 1 installment by "cash" with the key "checkout-1"
    Then the order is accepted as PROCESSING
    When the user places an order of "50.00" in 1 installment by "cash" with the key "checkout-1"
    Then the answer is 200 with the same order
    When the user places an order of "60.00" in 1 installment by "cash" with the key "checkout-1"
    Then the answer is 409 with error "conflict"
    And the user has 1 order
