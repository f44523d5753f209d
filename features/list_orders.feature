Feature: Listing a user's orders
  Orders come newest first, a page at a time; total is the user's real count.

  Background:
    Given a user called "paula"
    And the user has placed 7 orders

  Scenario: The first page holds everything, newest first
    When the user lists their orders
    Then the page shows 7 orders, newest first, with offset 0, limit 100 and total 7

  Scenario: Offset and limit pick a page
    When the user lists their orders with "offset=2&limit=3"
    Then the page shows orders 3 to 5 of the newest-first list, with total 7

  Scenario: A limit above 100 is capped at 100
    When the user lists their orders with "limit=500"
    Then the page shows 7 orders, newest first, with offset 0, limit 100 and total 7

  Scenario: An offset past the end gives an empty page and the true total
    When the user lists their orders with "offset=50"
    Then the page shows 0 orders, newest first, with offset 50, limit 100 and total 7

  Scenario Outline: A bad offset or limit is refused with 400
    When the user lists their orders with "<query>"
    Then the answer is 400 with error "bad_request"

    Examples:
      | query     |
      | offset=-1 |
      | limit=0   |
      | limit=ten |
